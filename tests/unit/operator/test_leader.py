"""Leader election: the Lease decision rule and the leader-election settings."""

from __future__ import annotations

import pytest
from msv_operator import leader
from msv_operator.config import ConfigError, load


def spec(holder: str, duration: int = 15) -> dict[str, object]:
    return {"holderIdentity": holder, "leaseDurationSeconds": duration}


def test_our_own_record_is_renewed() -> None:
    assert leader.decide(spec("me"), "me", observed_at=0, now=1000, default_duration=15) \
        == leader.RENEW


@pytest.mark.parametrize("record", [{}, spec(""), {"holderIdentity": None}])
def test_a_free_or_released_lease_is_taken_at_once(record: dict[str, object]) -> None:
    assert leader.decide(record, "me", observed_at=100, now=100, default_duration=15) \
        == leader.ACQUIRE


def test_another_holder_is_waited_for_until_its_record_is_stale_on_our_clock() -> None:
    other = spec("other", duration=10)
    assert leader.decide(other, "me", observed_at=100, now=109.9, default_duration=15) \
        == leader.WAIT
    assert leader.decide(other, "me", observed_at=100, now=110, default_duration=15) \
        == leader.ACQUIRE
    # Without a duration in the record, ours applies.
    assert leader.decide({"holderIdentity": "other"}, "me", observed_at=100, now=114,
                         default_duration=15) == leader.WAIT


def test_micro_time_is_what_the_api_server_accepts() -> None:
    from datetime import UTC, datetime
    assert leader.micro_time(datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)) \
        == "2026-01-02T03:04:05.000006Z"


def test_leader_election_settings_from_env_and_flags() -> None:
    _, cfg = load(["run"], {"MSV_LEADER_ELECTION": "true", "POD_NAMESPACE": "ops",
                            "POD_NAME": "op-1"})
    assert cfg.leader_election and cfg.lease_namespace == "ops"
    assert cfg.identity.startswith("op-1_")
    _, cfg = load(["run", "--no-leader-election", "--lease-namespace", "x",
                   "--identity", "me", "--lease-duration", "30", "--renew-deadline", "20"],
                  {"MSV_LEADER_ELECTION": "1"})
    assert not cfg.leader_election
    assert (cfg.lease_namespace, cfg.identity, cfg.lease_duration) == ("x", "me", 30.0)


@pytest.mark.parametrize("env, needle", [
    ({"MSV_LEADER_ELECTION": "maybe"}, "MSV_LEADER_ELECTION"),
    ({"MSV_RENEW_DEADLINE": "20"}, "renew deadline"),
    ({"MSV_RETRY_PERIOD": "0"}, "retry period"),
])
def test_bad_leader_election_settings_are_refused(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load(["run"], env)
