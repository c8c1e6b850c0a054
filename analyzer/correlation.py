""" "App started before proxy": a rule over two signals in one pod.

An app container's connection-refused lines count (raise the ``app-started-before-proxy`` incident, and the
DNS variant ``app-dns-refused-before-proxy``) only in the first seconds after its pod starts, or while that
pod's istio-proxy reports not ready. The same lines with a ready proxy long after start do not: they are some
other connectivity problem. Never while the pod terminates (proxy draining): that is shutdown ordering.

The matcher compiles ``SIGNALS`` next to the catalogue's rules. The caller sorts the matched records by event
time (a pod's proxy signals and app lines often share a batch, and the order matters), then, per record,
calls ``admits`` for each match of a ``GATED_RULES`` rule (dropping the match when it says no) and
``observe_signal`` for each signal match. The pipeline does this per batch, for the service and for ``scan``
alike. Pure: no I/O, time comes from the records.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from analyzer.types import COMPONENT_CONTAINERS, Component, Expression, LogRecord

GATED_RULE = "app-started-before-proxy"
# Rules whose matches the readiness gate decides: both say "before istio-proxy was ready".
GATED_RULES = frozenset({GATED_RULE, "app-dns-refused-before-proxy"})

PROXY_READY = "signal:proxy-ready"
PROXY_NOT_READY = "signal:proxy-not-ready"
PROXY_STARTING = "signal:proxy-starting"
PROXY_DRAINING = "signal:proxy-draining"

# pilot-agent's own lines (istio pkg/log; plain, tab-separated or JSON "msg"), from its call sites at 1.30.3 and
# the older forms still running in fleets. Each branch is led by a literal with no character a JSON encoder
# escapes, so the raw-record prefilter can use it.
SIGNALS: Mapping[str, Expression] = MappingProxyType(
    {
        # status/server.go handleReadyProbe: "Envoy proxy is ready" on the first good probe after a bad one;
        # metrics/metrics.go (1.10+): "Readiness succeeded in 1.2s"; app/wait.go (`pilot-agent wait`): "Envoy is ready!"
        PROXY_READY: Expression(r"Envoy proxy is ready|Readiness succeeded in [0-9]|Envoy is ready!"),
        # status/server.go, every failing probe (warn since 1.6, info before): "Envoy proxy is NOT ready: config
        # not received from XDS server ...", "... server is not live ...", "... workers have not yet started"
        PROXY_NOT_READY: Expression(r"Envoy proxy is NOT ready"),
        # printed once as the agent (and Envoy) start: app/cmd.go "Version <BuildInfo>" (version-sha-status),
        # pkg/envoy/agent.go, status server, xds proxy, pkg/envoy/proxy.go, Envoy's own first line; `pilot-agent
        # wait`; before 1.10 the epoch-0 lines of the old agent. Not pkg/cmd PrintFlags' "FLAG: --name=value":
        # one line per flag (dozens a start, and every istiod start too), and the same RunE logs "Version" right
        # after it in every release since 1.1 (pilot-agent main.go / app/cmd.go), so the start is dated anyway.
        PROXY_STARTING: Expression(
            r"Starting proxy agent"
            r"|Version [0-9]+\.[0-9]+\.[0-9][0-9A-Za-z.+_-]{0,60}-(?:[0-9a-f]{40}|unknown)-"
            r"|Opening status port [0-9]|Initializing with upstream address|Envoy command: \[|initializing epoch 0 \("
            r"|Waiting for Envoy proxy to be ready|Epoch 0 starting|creating new Envoy epoch 0"
        ),
        # pod termination: refused connections now are a shutdown-ordering problem, not this one. pkg/envoy/
        # agent.go terminate() "Agent draining Proxy for termination", DrainNow() "Agent draining proxy"
        # (native sidecars' preStop /drain, also "handling /drain, starting drain"), "Graceful termination
        # period is 5s", /quitquitquit, and the readiness probe once the agent's context is cancelled
        # ("Envoy proxy is NOT ready: server is terminated: received signal: terminated").
        PROXY_DRAINING: Expression(
            r"Agent draining [Pp]roxy|Graceful termination period is [0-9]|drain, starting drain"
            r"|quitquitquit, notifying pilot-agent to exit|Envoy proxy is NOT ready: server is terminated"
        ),
    }
)

_PROXY_CONTAINERS = COMPONENT_CONTAINERS[Component.ISTIO_PROXY]

# At equal times the later-phase signal wins (starting < not ready < ready < draining).
_PHASE_RANK = {PROXY_STARTING: 0, PROXY_NOT_READY: 1, PROXY_READY: 2, PROXY_DRAINING: 3}
# Phases in which the proxy is not serving yet: an app line then counts.
_NOT_SERVING = frozenset({PROXY_STARTING, PROXY_NOT_READY})

_PodKey = tuple[str, str, str]


@dataclass(slots=True)
class _Pod:
    first_seen: float
    last_seen: float
    # latest time each readiness signal was seen (by signal id)
    signals: dict[str, float]

    def seen(self, time: float) -> None:
        self.first_seen = min(self.first_seen, time)
        self.last_seen = max(self.last_seen, time)

    def phase_at(self, time: float) -> str | None:
        """The proxy's phase at ``time``: its most recent readiness signal then, if any.

        Draining sticks until the proxy starts again: pilot-agent keeps logging "NOT ready" while it
        terminates, and that must not read as a proxy that is not ready yet.
        """
        drained = self.signals.get(PROXY_DRAINING)
        started = self.signals.get(PROXY_STARTING)
        if drained is not None and drained <= time and not (started is not None and drained < started <= time):
            return PROXY_DRAINING
        best: tuple[float, int, str] | None = None
        for signal_id, at in self.signals.items():
            if at <= time:
                candidate = (at, _PHASE_RANK[signal_id], signal_id)
                if best is None or candidate > best:
                    best = candidate
        return None if best is None else best[2]


def _pod_key(record: LogRecord) -> _PodKey | None:
    if not record.pod:
        return None
    return (record.cluster or "", record.namespace or "", record.pod)


class ProxyReadiness:
    """Per-pod start time and istio-proxy readiness, from the signal lines; bounded by ``state_ttl``.

    A pod forgotten while its proxy was ready is remembered compactly (its start and ready times, at most
    ``max_settled`` pods, oldest dropped first): pilot-agent logs readiness only when it changes, so a
    long-running pod prints no signal for hours, and its refused connections then (the destination went
    down) must not read as a pod that has just started.
    """

    def __init__(self, startup_window: float = 60.0, state_ttl: float = 900.0, max_settled: int = 100_000) -> None:
        self.startup_window = startup_window
        self.state_ttl = state_ttl
        self.max_settled = max_settled
        self._pods: dict[_PodKey, _Pod] = {}
        self._settled: dict[_PodKey, tuple[float, float]] = {}  # evicted ready pods: (first seen, ready at)

    def _pod(self, key: _PodKey, time: float) -> _Pod:
        pod = self._pods.get(key)
        if pod is None:
            settled = self._settled.pop(key, None)
            if settled is None:
                pod = _Pod(time, time, {})
            else:
                first_seen, ready_at = settled
                pod = _Pod(min(first_seen, time), time, {PROXY_READY: ready_at})
            self._pods[key] = pod
        else:
            pod.seen(time)
        return pod

    def observe_signal(self, signal_id: str, record: LogRecord, time: float) -> None:
        """Record a signal line. Any line dates the pod; only the proxy's own lines set its readiness."""
        key = _pod_key(record)
        if key is None:
            return
        pod = self._pod(key, time)
        if signal_id not in _PHASE_RANK:
            return
        if record.container is not None and record.container not in _PROXY_CONTAINERS:
            return
        if time > pod.signals.get(signal_id, float("-inf")):
            pod.signals[signal_id] = time

    def admits(self, record: LogRecord, time: float) -> bool:
        """Whether an ``app-started-before-proxy`` match at ``time`` counts.

        Yes within ``startup_window`` of the pod's first seen line, or while the proxy's latest readiness
        signal says it is starting or not ready, or when nothing says it was ready by then (including a
        record without pod metadata: the line rule alone). No once the proxy reported ready and the pod
        started more than ``startup_window`` earlier; never while the pod terminates (proxy draining).
        """
        key = _pod_key(record)
        if key is None:
            return True
        pod = self._pod(key, time)
        phase = pod.phase_at(time)
        if phase == PROXY_DRAINING:
            return False
        if time - pod.first_seen <= self.startup_window:
            return True
        return phase is None or phase in _NOT_SERVING

    def knows(self, record: LogRecord) -> bool:
        """Whether the record's pod has any istio-proxy readiness signal: the gate then rests on two signals."""
        key = _pod_key(record)
        pod = self._pods.get(key) if key is not None else None
        return pod is not None and bool(pod.signals)

    def evict(self, stream_time: float) -> int:
        """Forget pods not seen for ``state_ttl`` (keeping the settled ones' two times); return how many."""
        stale = [k for k, p in self._pods.items() if stream_time - p.last_seen > self.state_ttl]
        for k in stale:
            pod = self._pods.pop(k)
            ready_at = pod.signals.get(PROXY_READY)
            if ready_at is not None and self.max_settled > 0 and pod.phase_at(pod.last_seen) == PROXY_READY:
                self._settled[k] = (pod.first_seen, ready_at)
                if len(self._settled) > self.max_settled:
                    del self._settled[next(iter(self._settled))]
        return len(stale)

    @property
    def settled(self) -> int:
        """Forgotten pods remembered as ready."""
        return len(self._settled)

    def __len__(self) -> int:
        return len(self._pods)
