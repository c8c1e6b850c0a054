"""The read path of the cause grouping on both stores: the list query's rule set, a root's symptoms read from
its cluster inside its window, and the open-root counts (analyzer/store/causes.py)."""

from __future__ import annotations

import pytest

from analyzer.catalogue import load_catalogue
from analyzer.store import IncidentQuery, Store
from analyzer.store.causes import CauseReader, open_roots
from analyzer.types import Changes, Evidence, IncidentKey, Interval, Status
from tests.conftest import PATTERNS

T0 = 1_700_000_000.0
RULES = load_catalogue(PATTERNS).by_id()


def iv(rule: str, first: float, last: float, *, cluster: str = "prod", ns: str = "shop", wl: str = "cart") -> Interval:
    pod = f"{wl}-6b746f74dc-9stvs"
    e = Evidence(T0 + first, f"{rule} line", pod, "istio-proxy")
    return Interval(rule, IncidentKey(cluster, ns, wl), T0 + first, T0 + last, 2, (e,), (e,), (pod,))


ROOT = iv("istiod-apiserver-unreachable", 0, 240, ns="istio-system", wl="istiod")
SYMPTOM = iv("proxy-not-ready", 30, 290)
LATE = iv("proxy-not-ready", 400, 500, wl="web")  # after the root's window (+2m): standalone
OTHER_CLUSTER = iv("proxy-not-ready", 30, 290, cluster="dev")


@pytest.fixture
async def filled(store: Store) -> Store:
    changes = Changes(merges=(ROOT, SYMPTOM, LATE, OTHER_CLUSTER), stream_time=T0 + 510)
    await store.commit_batch("g", changes, [], RULES)
    return store


async def test_the_list_query_takes_a_set_of_rules(filled: Store) -> None:
    query = IncidentQuery(rules=("istiod-apiserver-unreachable", "nope"), stream_time=T0 + 510)
    assert [r.id for r in (await filled.list_incidents(query)).items] == [ROOT.id]
    query = IncidentQuery(rules=("proxy-not-ready",), cluster="prod", stream_time=T0 + 510)
    assert {r.id for r in (await filled.list_incidents(query)).items} == {SYMPTOM.id, LATE.id}


async def test_a_root_reads_its_symptoms_from_its_window(filled: Store) -> None:
    (root,) = (await filled.list_incidents(IncidentQuery(rules=(ROOT.rule_id,), stream_time=T0 + 510))).items
    view = await CauseReader(filled, RULES, T0 + 510).view([root])
    assert [s.id for s in view.symptoms(ROOT.id)] == [SYMPTOM.id]
    assert view.affected(ROOT.id).pods == 1 and view.caused_by(SYMPTOM.id) == ROOT.id
    assert view.caused_by(LATE.id) is None and view.caused_by(OTHER_CLUSTER.id) is None
    # Suppressed on its own (4 minutes < its 5-minute window); open while its symptom is (quiet for less than
    # the symptom's 5-minute resolve_after).
    assert root.status is Status.SUPPRESSED and view.status(root) is Status.OPEN
    later = await CauseReader(filled, RULES, T0 + 600).view([root])
    assert later.status(root) is Status.SUPPRESSED


async def test_open_roots_on_both_stores(filled: Store) -> None:
    # At 300 s the symptom is open (recurring past its 2-minute window): so is its root's group, counted once
    # with the root's category and severity; the same trouble in another cluster stands alone.
    assert await open_roots(filled, RULES, T0 + 300) == [
        ("apiserver-connectivity", "high", 1),
        ("proxy-readiness", "medium", 1),
    ]
