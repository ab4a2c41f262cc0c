"""The embedded DNS resolver's pure core (issue 6): names, resolver logic, resolv.conf and hosts text.

``names.NameTable`` holds the cluster's names per network (fed by values that the wiring derives from
NetworkDB); ``resolver.Resolver`` is one sandbox's server as a sans-IO core (query bytes in, a reply or a
forward request out); ``wire`` the hand-rolled fast path; ``resolvconf`` renders the sandbox's
``resolv.conf`` and ``hosts`` and parses the host's upstream servers. See each module's theory of
operation.
"""

from .names import (
    EndpointRecord,
    NameTable,
    NetworkInfo,
    Resolution,
    Rr,
    ServicePort,
    ServiceRecord,
    ServiceTask,
    Srv,
    Status,
)
from .resolvconf import (
    HostResolvConf,
    parse_resolv_conf,
    render_hosts,
    render_resolv_conf,
    sandbox_resolv_conf,
)
from .resolver import Forward, Reply, Resolver, ResolverConfig, ResolverStats, Transport, Upstream

__all__ = [
    "NameTable",
    "NetworkInfo",
    "EndpointRecord",
    "ServiceRecord",
    "ServiceTask",
    "ServicePort",
    "Resolution",
    "Rr",
    "Srv",
    "Status",
    "Resolver",
    "ResolverConfig",
    "ResolverStats",
    "Reply",
    "Forward",
    "Transport",
    "Upstream",
    "HostResolvConf",
    "parse_resolv_conf",
    "render_resolv_conf",
    "sandbox_resolv_conf",
    "render_hosts",
]
