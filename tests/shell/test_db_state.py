"""The agent's state directory (``meshnet/runtime/state.py``): load, journal, compaction, refusals."""

from __future__ import annotations

import json
import os
import stat

import pytest

from meshnet.core.errors import ConfigError
from meshnet.runtime.state import StateDir, encode_del, encode_put


def test_a_new_directory_is_empty_private_and_locked(tmp_path):
    path = str(tmp_path / "s")
    sd = StateDir.open(path, "a")
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
        loaded = sd.load()
        assert loaded.is_empty and loaded.high_water == 0 and loaded.cluster_id is None
        with pytest.raises(ConfigError, match="another agent is using the state directory"):
            StateDir.open(path, "a")
    finally:
        sd.close()
    StateDir.open(path, "a").close()  # the lock went with the first


def test_node_file_and_journal_round_trip(tmp_path):
    path = str(tmp_path / "s")
    sd = StateDir.open(path, "a")
    sd.save_node(cluster_id="c1", high_water=2048, networks=["ov2", "ov1"])
    sd.append([encode_put(("ov1", "t", "k1"), b"v1"), encode_put(("", "g", "k/2"), b"\x00\xff")])
    sd.append([encode_put(("ov1", "t", "k1"), b"v1b"), encode_del(("ov1", "t", "gone"))])
    sd.close()

    sd = StateDir.open(path, "a")
    loaded = sd.load()
    assert (loaded.name, loaded.cluster_id, loaded.high_water) == ("a", "c1", 2048)
    assert loaded.networks == ["ov1", "ov2"]
    assert loaded.entries == {("ov1", "t", "k1"): b"v1b", ("", "g", "k/2"): b"\x00\xff"}
    assert sd.log_lines == 4
    sd.compact(loaded.entries)
    assert not os.path.exists(os.path.join(path, "entries.log")) and sd.log_lines == 0
    sd.append([encode_del(("", "g", "k/2"))])
    sd.close()

    sd = StateDir.open(path, "a")
    assert sd.load().entries == {("ov1", "t", "k1"): b"v1b"}
    sd.close()


def test_a_torn_last_line_is_ignored_but_damage_elsewhere_refuses_the_start(tmp_path):
    path = str(tmp_path / "s")
    sd = StateDir.open(path, "a")
    sd.append([encode_put(("n", "t", "k1"), b"v1")])
    sd.close()
    log = os.path.join(path, "entries.log")
    with open(log, "ab") as fh:
        fh.write(encode_put(("n", "t", "k2"), b"v2")[:20])  # a crash in the middle of an append
    sd = StateDir.open(path, "a")
    assert sd.load().entries == {("n", "t", "k1"): b"v1"}
    sd.close()

    with open(log, "wb") as fh:
        fh.write(b"not json\n" + encode_put(("n", "t", "k1"), b"v1"))
    sd = StateDir.open(path, "a")
    with pytest.raises(ConfigError, match=r"entries.log line 1 is damaged"):
        sd.load()
    sd.close()


def test_another_name_or_a_damaged_node_file_is_refused_with_the_fix(tmp_path):
    path = str(tmp_path / "s")
    sd = StateDir.open(path, "a")
    sd.save_node(cluster_id="", high_water=0, networks=[])
    sd.close()
    sd = StateDir.open(path, "b")
    with pytest.raises(ConfigError, match=r"belongs to node 'a'.*--name a"):
        sd.load()
    sd.close()

    with open(os.path.join(path, "node.json"), "w") as fh:
        json.dump({"format": 99, "name": "a"}, fh)
    sd = StateDir.open(path, "a")
    with pytest.raises(ConfigError, match="node.json is damaged"):
        sd.load()
    sd.close()


def test_a_state_dir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ConfigError, match="--state-dir"):
        StateDir.open(str(path), "a")


def test_save_node_replaces_atomically(tmp_path):
    path = str(tmp_path / "s")
    sd = StateDir.open(path, "a")
    sd.save_node(cluster_id="c", high_water=1024, networks=[])
    sd.save_node(cluster_id="c", high_water=2048, networks=["x"])
    assert sorted(os.listdir(path)) == ["lock", "node.json"]  # no temporary file left behind
    with open(os.path.join(path, "node.json")) as fh:
        assert json.load(fh)["high_water"] == 2048
    sd.close()
