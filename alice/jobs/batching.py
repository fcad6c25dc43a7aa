"""The batching rule, one for both backends: which waiting jobs join the head job's pipeline call.

The jobs right behind the head join it, in order, while they share its call (same model and
drawing settings, `generate.batch_key`) and their images fit the limit. The first that cannot
join (other settings, a chore, too many images) ends the batch, even if a later one could
join: no job is ever overtaken by a later job it could not share with. A job past its deadline
is taken out on the way (to be failed) and counts no image.
"""

from __future__ import annotations

from collections.abc import Iterable
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
