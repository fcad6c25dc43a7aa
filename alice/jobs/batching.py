"""Whose turn it is, and the batching rule, one for both backends: which waiting job heads the
next pipeline call, and which waiting jobs join it.

Turns go round the keys (the jobs' owners): the head is the oldest job of the key served least
recently (a key not served yet first), so one key's burst of forty jobs waits behind another
key's single job, which waits at most for the batch running when it came. Within one key it
is first come, first served; with one key (or none) the whole queue is one FIFO.

The jobs behind the head (every key's, in queue order) join it, in order, while they share its call (same model and
drawing settings, `generate.batch_key`) and their images fit the limit. The first that cannot
join (other settings, a chore, too many images) ends the batch, even if a later one could
join: no job is ever overtaken by a later job it could not share with. A job past its deadline
is taken out on the way (to be failed) and counts no image.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from alice.engine.generate import batch_key
from alice.jobs.job import Chore, Job


@dataclass
class Companions:
    """What the rule took from behind the head, in queue order: `joined` share its call,
    `expired` waited past their deadline. Together they are a prefix of what waited behind it."""

    joined: list[Job] = field(default_factory=list)
    expired: list[Job] = field(default_factory=list)

    @property
    def taken(self) -> int:
        return len(self.joined) + len(self.expired)


def whose_turn(waiting: Sequence[Job], served: Mapping[str | None, float]) -> Job:
    """The job to head the next batch: of the keys with jobs `waiting` (in queue order), the
    first job of the one `served` least recently (when it last had a batch; never: first)."""
    firsts: dict[str | None, Job] = {}
    for job in waiting:
        firsts.setdefault(job.owner, job)
    return min(firsts.values(), key=lambda job: served.get(job.owner, -math.inf))  # min keeps queue order on ties


def companions(head: Job, behind: Iterable[Job | Chore], max_images: int, now: float) -> Companions:
    """The jobs of `behind` (what waits right behind `head`, in order) that join `head`'s batch
    of at most `max_images` images, and the expired ones met on the way."""
    found = Companions()
    images = head.spec.num_images
    key = (head.model, batch_key(head.spec))
    for job in behind:
        if isinstance(job, Chore) or (job.model, batch_key(job.spec)) != key:
            break
        if now > job.deadline:
            found.expired.append(job)
            continue
        if images + job.spec.num_images > max_images:
            break
        found.joined.append(job)
        images += job.spec.num_images
    return found
