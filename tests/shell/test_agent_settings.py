"""``meshnet-agent run`` settings for NetworkDB: the state directory default and the ``[networkdb]`` table."""

from __future__ import annotations

import pytest

from meshnet import agent_cli
from meshnet.core.errors import ConfigError


def settings(tmp_path, *flags: str, toml: str | None = None):
    argv = ["run", "--name", "host-a", "--bind", "127.0.8.40:0", *flags]
    cfg = tmp_path / "agent.toml"
    cfg.write_text(toml or "")
    argv += ["--config", str(cfg)]  # never /etc/meshnet/agent.toml
    args = agent_cli._build_parser().parse_args(argv)
    return agent_cli.build_settings(args)


def test_the_state_directory_defaults_to_var_lib_meshnet_name(tmp_path):
    s, _, state_dir = settings(tmp_path)
    assert state_dir == "/var/lib/meshnet/host-a"
    assert s.networkdb.state_dir == "/var/lib/meshnet/host-a"
    s, _, state_dir = settings(tmp_path, "--state-dir", str(tmp_path / "s"))
    assert state_dir == s.networkdb.state_dir == str(tmp_path / "s")


def test_the_profile_picks_the_networkdb_preset_and_the_table_overrides_it(tmp_path):
    from meshnet.networkdb import config as ndb

    s, _, _ = settings(tmp_path, "--profile", "local", "--state-dir", str(tmp_path / "s"))
    assert s.networkdb.config == ndb.local()
    s, _, _ = settings(
        tmp_path,
        "--state-dir",
        str(tmp_path / "s"),
        toml='profile = "wan"\n[networkdb]\ngossip_interval = 0.3\n',
    )
    assert s.networkdb.config == ndb.wan().with_(gossip_interval=0.3)


@pytest.mark.parametrize(
    "toml, needle",
    [
        ("[networkdb]\ngosip_interval = 1\n", "unknown [networkdb] field 'gosip_interval'"),
        ('[networkdb]\ngossip_nodes = "3"\n', "[networkdb] gossip_nodes must be a int"),
        ("networkdb = 3\n", "[networkdb] must be a table"),
    ],
)
def test_bad_networkdb_settings_name_the_fix(tmp_path, toml, needle):
    with pytest.raises(ConfigError) as exc:
        settings(tmp_path, "--state-dir", str(tmp_path / "s"), toml=toml)
    assert needle in str(exc.value)


def test_a_state_dir_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(ConfigError, match="is not a directory"):
        settings(tmp_path, "--state-dir", str(f))
