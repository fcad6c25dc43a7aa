"""`python -m alice`: the same command line as the `alice` console script."""

from alice.cli import main

if __name__ == "__main__":
    main()
