"""The pure parts of bench/state.py's jobs: the phases of records and the gated generator."""

from __future__ import annotations

from collections import Counter

from bench.jobs import (
    UPDATE_EMIT,
    VERIFY,
    GatedGeneratorSource,
    churn_record,
    expected_churn_lines,
    expected_verify_lines,
    state_phases,
    state_record,
)


def test_phases_load_every_key_once_change_one_percent_and_read_back_every_20th():
    keys = 10_000
    load, change, verify = state_phases(keys)
    records = [state_record(g, keys) for g in range(load + change + verify)]
    assert sorted(k for k, v, _ in records[:load] if v == 1) == list(range(keys))
    changed = [k for k, v, _ in records[load:load + change]]
    assert len(set(changed)) == change == keys // 100 and max(changed) < keys
    read = [k for k, _, mode in records[load + change:] if mode == VERIFY]
    assert len(read) == verify == len(expected_verify_lines(keys))
    assert set(changed) <= set(read)                  # every changed key is read back
    assert Counter(line.split()[1] for line in expected_verify_lines(keys)) == {
        "1": verify - change, "2": change}


def test_churn_emits_each_keys_last_version():
    keys, records = 7, 100
    last = {}
    for g in range(records):
        key, version, mode = churn_record(g, keys, records)
        assert version == last.get(key, 0) + 1
        last[key] = version
        assert (mode == UPDATE_EMIT) == (g + keys >= records)
    assert expected_churn_lines(keys, records) == {f"{k} {v}" for k, v in last.items()}


def drain(readers):
    out = []
    for r in readers:
        while batch := r.poll(50):
            out += batch
    return out


def test_the_gated_generator_holds_at_each_gate_and_keeps_its_place_across_a_restore(
        tmp_path, monkeypatch):
    monkeypatch.setattr("bench.jobs.GatedReader.IDLE_S", 0)
    source = GatedGeneratorSource(1000, lambda g: g, [300, 310], str(tmp_path))
    readers = [source.create_reader({str(k): 0 for k in range(128) if k % 2 == i})
               for i in range(2)]
    assert sorted(drain(readers)) == list(range(300))
    assert all(r.poll(50) == [] for r in readers)           # held, not finished
    (tmp_path / "gate-300").touch()
    assert sorted(drain(readers)) == list(range(300, 310))
    # a restore from the readers' positions (at p = 1) goes on from there
    positions = {k: v for r in readers for k, v in r.positions().items()}
    (tmp_path / "gate-310").touch()
    restored = source.create_reader(positions)
    rest = []
    while (batch := restored.poll(64)) is not None:
        rest += batch
    assert sorted(rest) == list(range(310, 1000))


def test_change_rounds_spread_over_five_key_classes_and_every_version_is_read_back():
    keys, rounds = 10_000, 7
    load, change, verify = state_phases(keys)
    records = [state_record(g, keys, rounds) for g in range(load + change * rounds + verify)]
    versions = {}
    for k, v, mode in records:
        if mode != VERIFY:
            assert v == versions.get(k, 0) + 1          # each write is the next version
            versions[k] = v
    rounds_keys = [{k for k, _, _ in records[load + change * r:load + change * (r + 1)]}
                   for r in range(rounds)]
    assert all(len(ks) == change for ks in rounds_keys)
    assert len(set().union(*rounds_keys[:5])) == 5 * change        # rounds 0-4: new keys
    assert rounds_keys[5] == rounds_keys[0] and rounds_keys[6] == rounds_keys[1]
    read = {k for k, _, mode in records if mode == VERIFY}
    assert set().union(*rounds_keys) <= read
    assert expected_verify_lines(keys, rounds) == {f"{k} {versions[k]}" for k in read}
