"""What the channel simulators share for shipment write-backs: the record tests read, and
the fault knobs (fail the next N calls with HTTP 500, lose the answer to the next N
accepted ones, or refuse them as the platform does for an order it will not ship)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class WriteBack:
    """One accepted write-back: the platform's order id, the logistics company (code or
    name, as the platform takes it), the tracking number and, for a parcel that carries
    part of the order, its lines (platform line id, quantity)."""

    order_id: str
    company: str
    tracking_number: str
    lines: tuple[tuple[str, int], ...] = ()


@dataclass
class WritebackDesk:
    """A simulator's write-back state. `fail_next`: answer this many write-back calls with
    HTTP 500 (then behave); `lose_next`: apply this many accepted write-backs but answer
    them HTTP 500, as when the answer is lost on the way back; `refuse`: answer every one
    with the platform's business error. `updated` records tracking changes (re-bookings)."""

    received: list[WriteBack] = field(default_factory=list)
    updated: list[WriteBack] = field(default_factory=list)
    fail_next: int = 0
    lose_next: int = 0
    refuse: bool = False
    calls: int = 0

    def should_fail(self) -> bool:
        """Count a call; True if it is to be answered 500."""
        self.calls += 1
        if self.fail_next > 0:
            self.fail_next -= 1
            return True
        return False

    def answer_lost(self) -> bool:
        """True if the answer to the write-back just applied is to be lost (HTTP 500)."""
        if self.lose_next > 0:
            self.lose_next -= 1
            return True
        return False
