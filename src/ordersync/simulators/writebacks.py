"""What the channel simulators share for shipment write-backs: the record tests read, and
the fault knobs (fail the next N calls with HTTP 500, or refuse them as the platform does
for an order it will not ship)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class WriteBack:
    """One accepted write-back: the platform's order id, the logistics company (code or
    name, as the platform takes it) and the tracking number."""

    order_id: str
    company: str
    tracking_number: str


@dataclass
class WritebackDesk:
    """A simulator's write-back state. `fail_next`: answer this many write-back calls with
    HTTP 500 (then behave); `refuse`: answer every one with the platform's business error."""

    received: list[WriteBack] = field(default_factory=list)
    fail_next: int = 0
    refuse: bool = False
    calls: int = 0

    def should_fail(self) -> bool:
        """Count a call; True if it is to be answered 500."""
        self.calls += 1
        if self.fail_next > 0:
            self.fail_next -= 1
            return True
        return False
