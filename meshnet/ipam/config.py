"""IPAM configuration: the defaults of ipam.md section 3.13, plus test-only mutation switches.

Theory of operation: every tunable of the IPAM core lives in one frozen dataclass; durations are float
seconds of the caller's monotonic clock. Timing appears only in liveness (retries, relays, hint rate) and in
the explicit reclaim path (ipam.md 3.1): no safety argument reads a duration.

The ``unsafe_*`` switches exist only for the mutation tests (ipam.md section 4, S9): each removes one safety
check so a rule machine can show that the check is necessary. They are refused unless ``allow_unsafe`` is
set as well, so a production config can never carry one by accident.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from meshnet.core.errors import ConfigError

__all__ = ["IpamConfig", "fast"]


@dataclass(frozen=True, slots=True)
class IpamConfig:
    """Tunables of the IPAM core (ipam.md 3.13). Use the defaults, or ``fast()`` in tests."""

    #: One try of a request to an owner waits this long for an answer (ipam.md 3.5: 1 s per try).
    request_try_timeout: float = 1.0
    #: An allocation that needs other nodes gives up after this long with a typed error (3.5/3.7: 10 s).
    allocation_budget: float = 10.0
    #: A held record's free hint is rewritten at most this often per space (3.13: at most 1/s).
    hint_interval: float = 1.0
    #: A donor resends its own unconfirmed grant this often while the target is alive.
    grant_retry_interval: float = 2.0
    #: Any node whose view shows a grant unconfirmed for this long resends it to its (alive) target (3.5).
    relay_after: float = 30.0
    #: A graceful leave waits at most this long for the heirs' confirming records (3.9).
    leave_wait: float = 30.0
    #: A reclaim collects the acknowledgements of every other member for at most this long (3.9).
    reclaim_budget: float = 30.0
    #: Addresses of a dead node's endpoints stay reserved this long after a reclaim (ARP/FDB drain, 3.9).
    quarantine_interval: float = 600.0
    #: Pending releases and eager block requests are retried on this period.
    retry_interval: float = 2.0
    #: Blocks tile a subnet of S units by B = min(S, max(min_block_size, S // max_blocks)) (3.2).
    min_block_size: int = 16
    max_blocks: int = 256
    #: The global VNI space [vni_first, vni_last] in blocks of vni_block_size (3.12; libnetwork's overlay
    #: manager uses [4096, 2^24 - 1]).
    vni_first: int = 4096
    vni_last: int = 2**24 - 1
    vni_block_size: int = 4096
    #: Networks created without a subnet get one of this pool, cut into subnets of this prefix length
    #: (libnetwork's global default: 10.0.0.0/8 in /24s).
    default_pool: str = "10.0.0.0/8"
    default_pool_prefix: int = 24
    #: A reclaim intent carries at most this many block proposals (it is split beyond).
    max_proposals_per_message: int = 1024

    # -- mutation switches (tests only; ipam.md S9) --
    #: Required for any unsafe_* switch.
    allow_unsafe: bool = False
    #: Accept a grant even if its epoch is not above the block's high-water mark.
    unsafe_skip_epoch_check: bool = False
    #: Release messages, records and results before the durable state that justifies them is persisted.
    unsafe_skip_write_ahead: bool = False
    #: Let a reclaim skip its preconditions and acknowledgements (what ``--force`` does to a live node).
    unsafe_reclaim_without_acks: bool = False

    def __post_init__(self) -> None:
        positive = (
            "request_try_timeout",
            "allocation_budget",
            "hint_interval",
            "grant_retry_interval",
            "relay_after",
            "leave_wait",
            "reclaim_budget",
            "quarantine_interval",
            "retry_interval",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.request_try_timeout > self.allocation_budget:
            raise ConfigError("request_try_timeout must not exceed allocation_budget")
        if self.min_block_size < 1 or self.max_blocks < 1 or self.vni_block_size < 1:
            raise ConfigError("min_block_size, max_blocks and vni_block_size must be >= 1")
        if not 1 <= self.vni_first <= self.vni_last <= 2**24 - 1:
            raise ConfigError("need 1 <= vni_first <= vni_last <= 2^24 - 1")
        if self.max_proposals_per_message < 1:
            raise ConfigError("max_proposals_per_message must be >= 1")
        unsafe = [
            n
            for n in ("unsafe_skip_epoch_check", "unsafe_skip_write_ahead", "unsafe_reclaim_without_acks")
            if getattr(self, n)
        ]
        if unsafe and not self.allow_unsafe:
            raise ConfigError(f"{', '.join(unsafe)} break safety on purpose (tests only); set allow_unsafe")

    def with_(self, **changes: object) -> IpamConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]


def fast() -> IpamConfig:
    """The defaults with shorter waits, for rule machines (the ratios of 3.13 are kept)."""
    return IpamConfig(
        relay_after=6.0,
        leave_wait=6.0,
        reclaim_budget=10.0,
        quarantine_interval=60.0,
    )
