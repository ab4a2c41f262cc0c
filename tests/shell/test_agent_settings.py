"""``meshnet-agent run`` settings for NetworkDB: the state directory default and the ``[networkdb]`` table."""

from __future__ import annotations

import pytest

from meshnet import agent_cli
from meshnet.core.errors import ConfigError


def settings(tmp_path, *flags: str, toml: str | None = None, default_dataplane: bool = False):
    argv = ["run", "--name", "host-a", "--bind", "127.0.8.40:0", *flags]
    if not default_dataplane and "--dataplane" not in flags and "dataplane" not in (toml or ""):
        argv += ["--dataplane", "none"]  # the kernel default needs root (tested below)
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


def cnm_of(s):
    return next(svc for svc in s.services if svc.name == "cnm")


def test_the_dataplane_defaults_to_kernel_and_cnm_comes_after_ipam(tmp_path, monkeypatch):
    from meshnet.dataplane import MemoryDataplane

    state = ["--state-dir", str(tmp_path / "s")]
    s, _, _ = settings(tmp_path, *state, "--dataplane", "none")
    names = [svc.name for svc in s.services]
    assert names.index("ipam") < names.index("cnm")  # CNM uses IPAM
    assert isinstance(cnm_of(s).dp, MemoryDataplane)
    # The default is the kernel dataplane, which needs root; as root it is NetlinkDataplane.
    monkeypatch.setattr(agent_cli.os, "geteuid", lambda: 1000)
    with pytest.raises(ConfigError, match="needs root"):
        settings(tmp_path, *state, default_dataplane=True)
    monkeypatch.setattr(agent_cli.os, "geteuid", lambda: 0)
    s, _, _ = settings(tmp_path, *state, default_dataplane=True)
    from meshnet.dataplane.netlink import NetlinkDataplane

    assert isinstance(cnm_of(s).dp, NetlinkDataplane)
    cnm_of(s).dp.close()


def test_data_addr_and_netns_prefix_flags_and_toml(tmp_path):
    state = ["--state-dir", str(tmp_path / "s"), "--dataplane", "none"]
    cnm = cnm_of(settings(tmp_path, *state)[0])
    assert (cnm.data_addr, cnm.prefix) == ("127.0.8.40", "mn-")  # the bind IP, the default prefix
    cnm = cnm_of(settings(tmp_path, *state, toml='data_addr = "10.77.0.11"\nnetns_prefix = "h1-"\n')[0])
    assert (cnm.data_addr, cnm.prefix) == ("10.77.0.11", "h1-")
    cnm = cnm_of(
        settings(
            tmp_path,
            *state,
            "--data-addr",
            "10.77.0.12",
            "--netns-prefix",
            "h2-",
            toml='netns_prefix = "x-"\n',
        )[0]
    )
    assert (cnm.data_addr, cnm.prefix) == ("10.77.0.12", "h2-")


@pytest.mark.parametrize(
    "flags, toml, needle",
    [
        (["--data-addr", "host-a"], "", "--data-addr 'host-a' is not an IP address"),
        (["--netns-prefix", "a/b"], "", "--netns-prefix 'a/b'"),
        ([], 'dataplane = "ebpf"\n', "dataplane 'ebpf' is unknown"),
        ([], "data_addr = 5\n", "data_addr must be an IP address string"),
    ],
)
def test_bad_cnm_settings_name_the_fix(tmp_path, flags, toml, needle):
    with pytest.raises(ConfigError) as exc:
        settings(tmp_path, "--state-dir", str(tmp_path / "s"), *flags, toml=toml)
    assert needle in str(exc.value)
