"""Options, wire formats and map bookkeeping of the live plugin."""

from __future__ import annotations

import math
import pickle
import re

import numpy as np
import pytest

from mnedge_live.assembly import StepAssembler, grid_pixel
from mnedge_live.config import ConfigError, LiveConfig
from mnedge_live.serializers import get_serializer, msgpack_dumps, msgpack_loads


@pytest.mark.parametrize("opts, name", [
    ({"mode": "fly"}, "mode"), ({"max_batch": 0}, "max_batch"), ({"serializer": "pickle"}, "serializer"),
    ({"serializer": "json"}, "serializer"), ({"dispersion_eV": 0.1}, "offset_eV"),
    ({"pixel_fields": ["a"]}, "pixel_fields"), ({"pixel_fields": ["row", "row"]}, "pixel_fields"),
    ({"energy_axis": [1.0]}, "energy_axis"),
    ({"l3_window_eV": [650, 640]}, "l3_window_eV"), ({"epics_mode": "x"}, "epics_mode"),
])
def test_bad_options_are_refused_naming_the_option(opts, name):
    with pytest.raises(ConfigError, match=f"^{name}:"):
        LiveConfig(**opts)


@pytest.mark.parametrize("address", ["127.0.0.1:5568", "tcp://127.0.0.1:5568", "localhost:5567", "[::1]:5568",
                                     "tcp://[::1]:5568", "::1:5568", "beamline-proxy.example.org:65535"])
def test_proxy_addresses_in_every_documented_form_are_accepted(address):
    assert LiveConfig(in_address=address, out_address="otherhost:1").in_address == address
    assert LiveConfig(in_address="otherhost:1", out_address=address).out_address == address


@pytest.mark.parametrize("in_address, out_address", [("127.0.0.1:5568", "127.0.0.1:5568"),
                                                     ("tcp://127.0.0.1:5568", "127.0.0.1:5568")])
def test_one_proxy_port_for_both_directions_is_refused(in_address, out_address):
    """The service subscribes to the proxy's output port and publishes to its input port: one address for
    both connected a publisher to the proxy's publisher, and nothing was read or sent."""
    with pytest.raises(ConfigError, match="^out_address: is in_address"):
        LiveConfig(in_address=in_address, out_address=out_address)


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1", "127.0.0.1:99999", "127.0.0.1:0", "127.0.0.1:http",
                                     "127.0.0.1:+5568", " 127.0.0.1:5568", "*:5568", "ipc:///tmp/proxy",
                                     ":5568", "[::1:5568", "tcp://"])
@pytest.mark.parametrize("name", ["in_address", "out_address"])
def test_proxy_addresses_that_are_not_host_port_are_refused_naming_the_option(name, address, capsys):
    """0MQ refused some at start-up (ZMQError), connected others to no port at all ('ready', publishing nowhere)."""
    from mnedge_live.cli import main

    with pytest.raises(ConfigError, match=f"^{name}: "):
        LiveConfig(**{name: address})
    flag = "--in" if name == "in_address" else "--out"
    assert main(["live", flag, address, "--check"]) == 2
    assert main(["live", flag, address]) == 2
    out = capsys.readouterr()
    assert out.out.startswith(f"FAIL config: {name}: ") and f"bad option: {name}: " in out.err


def test_toml_then_flags(tmp_path):
    p = tmp_path / "live.toml"
    p.write_text('mode = "step"\nsignal_field = "tey"\nmax_batch = 64\n')
    cfg = LiveConfig.from_sources(p, {"signal_field": "pfy", "norm_field": None})
    assert (cfg.mode, cfg.signal_field, cfg.max_batch, cfg.norm_field) == ("step", "pfy", 64, None)
    p.write_text('modee = "step"\n')
    with pytest.raises(ConfigError, match="^modee:"):
        LiveConfig.from_sources(p)


@pytest.mark.parametrize("text", ['live = "step"\n', "live = [1, 2]\n"])
def test_a_live_key_that_is_not_a_table_is_refused_naming_it(tmp_path, capsys, text):
    from mnedge_live.cli import main

    p = tmp_path / "live.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match="^live: must be a table"):
        LiveConfig.from_sources(p)
    assert main(["live", "--config", str(p), "--check"]) == 2
    assert main(["live", "--config", str(p)]) == 2
    out = capsys.readouterr()
    assert (out.out + out.err).count("live: must be a table") == 2

def test_msgpack_round_trip_and_pickle_refusals():
    doc = {"data": {"spec": np.arange(5.0)}, "seq_num": 3, "t": (1, 2)}
    back = msgpack_loads(msgpack_dumps(doc))
    assert np.array_equal(back["data"]["spec"], doc["data"]["spec"]) and back["seq_num"] == 3
    with pytest.raises(ValueError, match="serializer"):
        get_serializer("pickle")
    assert get_serializer("pickle", allow_pickle=True)[1] is pickle.loads
    with pytest.raises(ValueError, match="object arrays"):
        msgpack_loads(msgpack_dumps({"a": np.array([{}, 1], dtype=object)}))
    for garbage in (b"\xc1\xc1", b"", pickle.dumps({"a": 1}), msgpack_dumps([1, 2])):
        with pytest.raises(ValueError):
            msgpack_loads(garbage)


def test_grid_pixels_follow_bluesky_snaking():
    assert [grid_pixel(s, (2, 3), (False, True)) for s in range(1, 7)] == [
        (0, 0), (0, 1), (0, 2), (1, 2), (1, 1), (1, 0)]
    assert grid_pixel(7, (2, 3), None) is None


def test_step_assembler_covers_and_refuses_bad_points():
    a = StepAssembler((636, 646), (648, 658))
    assert "I0" in a.add(640, 1.0, 0.0) and "non-finite" in a.add(np.nan, 1.0)
    for e in np.linspace(630, 660, 40):
        assert a.add(e, 2.0, 2.0) == ""
    e, s = a.spectrum()
    assert a.covered() and np.all(np.diff(e) >= 0) and np.allclose(s, 1.0)


def test_the_service_hides_its_start_up_objects_from_the_collector_when_ready(capsys):
    import gc

    from mnedge_live.commands.live import ready

    before = gc.get_freeze_count()
    try:
        ready()
        assert gc.get_freeze_count() > before
        assert "mnedge live: ready" in capsys.readouterr().out
    finally:
        gc.unfreeze()


def _certificates(root) -> dict[str, str]:
    """CurveZMQ certificate files of a service and of a proxy (``NAME.key`` public, ``NAME.key_secret``)."""
    import zmq.auth

    paths = {}
    for who in ("service", "proxy"):
        public, secret = zmq.auth.create_certificates(str(root), who)
        paths[who], paths[who + "_public"] = str(secret), str(public)
    return paths


def test_curve_key_files_must_hold_the_right_kind_of_key(tmp_path, capsys):
    """A public certificate given as curve_secret_key stopped the service at start-up
    ('The client secret key could not be found') although --check said ok."""
    from mnedge_live.cli import main

    keys = _certificates(tmp_path)
    good = LiveConfig(curve_secret_key=keys["service"], curve_server_public_key=keys["proxy_public"])
    assert good.curve_server_public_key == keys["proxy_public"]
    LiveConfig(curve_secret_key=keys["service"], curve_server_public_key=keys["proxy"])  # has a public key too
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key\n")
    short = tmp_path / "short.key_secret"
    short.write_text('curve\n    public-key = "abc"\n    secret-key = "def"\n')
    for opts, name, words in [
        ({"curve_secret_key": keys["service_public"]}, "curve_secret_key", "holds no secret key"),
        ({"curve_secret_key": str(garbage)}, "curve_secret_key", "not a CurveZMQ certificate"),
        ({"curve_secret_key": str(short)}, "curve_secret_key", "its public-key is not a 40-character Z85"),
        ({"curve_server_public_key": str(garbage)}, "curve_server_public_key", "not a CurveZMQ certificate"),
        ({"curve_out_server_public_key": str(short)}, "curve_out_server_public_key", "its public-key is not"),
    ]:
        full = {"curve_secret_key": keys["service"], "curve_server_public_key": keys["proxy_public"], **opts}
        with pytest.raises(ConfigError, match=f"^{name}: {words}"):
            LiveConfig(**full)
    args = ["live", "--curve-secret-key", keys["service_public"], "--curve-server-public-key", keys["proxy_public"]]
    assert main([*args, "--check"]) == 2
    assert capsys.readouterr().out.startswith("FAIL config: curve_secret_key: holds no secret key")


def test_each_curve_connection_is_secured_on_its_own(tmp_path):
    """The publication alone (secret key + curve_out_server_public_key) was refused although
    service.curve_configs supports it and docs/operations.md presents the two sides as independent."""
    from mnedge_live.service import curve_configs

    keys = _certificates(tmp_path)
    out_only = LiveConfig(curve_secret_key=keys["service"], curve_out_server_public_key=keys["proxy_public"])
    curve_in, curve_out = curve_configs(out_only)
    assert curve_in is None and str(curve_out.server_public_key) == keys["proxy_public"]
    in_only = LiveConfig(curve_secret_key=keys["service"], curve_server_public_key=keys["proxy_public"])
    assert curve_configs(in_only)[1] is None and curve_configs(in_only)[0] is not None
    both = LiveConfig(curve_secret_key=keys["service"], curve_server_public_key=keys["proxy_public"],
                      curve_out_server_public_key=keys["proxy_public"])
    assert None not in curve_configs(both)
    for opts, name in [({"curve_secret_key": keys["service"]}, "curve_server_public_key"),
                       ({"curve_server_public_key": keys["proxy_public"]}, "curve_server_public_key"),
                       ({"curve_out_server_public_key": keys["proxy_public"]}, "curve_out_server_public_key")]:
        with pytest.raises(ConfigError, match=f"^{name}: "):
            LiveConfig(**opts)


@pytest.mark.parametrize("text, named", [
    ('max_batch = 64\n[live]\nmode = "step"\n', "max_batch"),
    ('[live]\nmode = "step"\n[epics]\nprefix = "X:"\n', "epics"),
    ('[live]\n[epics]\nin_address = "127.0.0.1:45992"\nout_address = "127.0.0.1:45991"\n', "epics"),
    ('bank = "site_bank.npz"\n[train]\nbudget = 1\n[live]\nmode = "step"\n', "bank, train"),
])
def test_keys_outside_the_live_table_are_refused_naming_them(tmp_path, capsys, text, named):
    """They were dropped without a word (the [epics] table's addresses above were never used)."""
    from mnedge_live.cli import main

    p = tmp_path / "live.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=f"^{named}: outside the \\[live\\] table"):
        LiveConfig.from_sources(p)
    assert main(["live", "--config", str(p), "--check"]) == 2
    assert capsys.readouterr().out.startswith(f"FAIL config: {named}: outside the [live] table")


def test_both_file_shapes_still_load(tmp_path):
    p = tmp_path / "live.toml"
    p.write_text('[live]\nmode = "step"\nmax_batch = 64\n')
    assert (LiveConfig.from_sources(p).mode, LiveConfig.from_sources(p).max_batch) == ("step", 64)
    p.write_text('mode = "step"\nmax-batch = 64\n')
    assert (LiveConfig.from_sources(p).mode, LiveConfig.from_sources(p).max_batch) == ("step", 64)
    p.write_text("[live]\n")
    assert LiveConfig.from_sources(p) == LiveConfig()


@pytest.mark.parametrize("opts, name", [
    ({"max_delay_ms": True}, "max_delay_ms"),
    ({"max_message_mb": 0}, "max_message_mb"),
    ({"max_message_mb": 70000}, "max_message_mb"),
    ({"max_message_mb": True}, "max_message_mb"),
    ({"step_readout_every": True}, "step_readout_every"),
    ({"l3_window_eV": [False, True]}, "l3_window_eV"),
    ({"energy_axis": [True, False]}, "energy_axis"),
    ({"dispersion_eV": True, "offset_eV": 600.0}, "dispersion_eV"),
])
def test_booleans_are_not_taken_as_numbers(opts, name):
    with pytest.raises(ConfigError, match=f"^{name}: "):
        LiveConfig(**opts)


@pytest.mark.parametrize("opts, name, words", [
    ({"mode": "step", "map_bin": 4}, "map_bin", "spectrum images"),
    ({"allow_pickle": True}, "allow_pickle", "permits serializer 'pickle' only"),
    ({"energy_axis": [640.0, 650.0], "dispersion_eV": 0.1, "offset_eV": 600.0}, "energy_axis", "not both"),
    ({"l3_window_eV": [636.0, math.inf]}, "l3_window_eV", "finite"),
    ({"l2_window_eV": [math.nan, 658.0]}, "l2_window_eV", "finite"),
    ({"l2_window_eV": [658.0, 648.0]}, "l2_window_eV", "low < high"),
    ({"l3_window_eV": [648.0, 658.0], "l2_window_eV": [636.0, 646.0]}, "l2_window_eV", "must lie above l3_window_eV"),
    ({"l2_window_eV": [630.0, 658.0]}, "l2_window_eV", "must lie above l3_window_eV"),
    ({"detectors": []}, "detectors", "non-empty"),
    ({"backend": "onnxrutime"}, "backend", "must be one of auto, tensorrt, onnxruntime, torch"),
])
def test_contradictory_or_meaningless_options_are_refused(opts, name, words):
    """Each was accepted and then ignored or worked against the rest (map_bin in step mode,
    energy_axis silently winning over dispersion_eV/offset_eV, swapped windows covering the edge at once...)."""
    with pytest.raises(ConfigError, match=f"^{name}: .*{re.escape(words)}"):
        LiveConfig(**opts)


def test_what_stays_accepted():
    assert LiveConfig(mode="step", map_bin=1).map_bin == 1
    assert LiveConfig(serializer="pickle", allow_pickle=True).allow_pickle is True
    assert LiveConfig(allow_pickle=False).serializer == "msgpack"
    assert LiveConfig(energy_axis=[640, 650.5]).energy_axis == [640, 650.5]
    assert LiveConfig(dispersion_eV=0.1, offset_eV=600).offset_eV == 600
    assert LiveConfig(l3_window_eV=[636, 650], l2_window_eV=[645, 660]).l2_window_eV == [645, 660]  # overlapping
    assert LiveConfig(detectors=["eels"]).detectors == ["eels"]


def test_the_backends_are_the_engines():
    from mnedge_live.config import BACKENDS
    from mnedge_live.engine.backends import BACKEND_ORDER

    assert set(BACKENDS) == {"auto", *BACKEND_ORDER}
    for name in BACKENDS:
        assert LiveConfig(backend=name).backend == name


def test_a_backend_typo_is_a_bad_option_not_a_model_failure(capsys):
    """--check said 'FAIL model: ... unknown backend' and exited 1 (the model is fine, the option is not)."""
    from mnedge_live.cli import main

    assert main(["live", "--backend", "onnxrutime", "--check"]) == 2
    assert main(["live", "--backend", "onnxrutime"]) == 2
    out = capsys.readouterr()
    assert out.out.startswith("FAIL config: backend: ") and "bad option: backend: " in out.err


@pytest.mark.parametrize("seconds", [1e-6, 1e-9, 0.5, 0.999, -1, 604801, math.nan, True])
def test_run_timeout_below_a_second_is_refused(seconds, capsys):
    """run_timeout_s = 1e-6 spun the service (7 s of CPU in 8 s) and closed runs between their events."""
    from mnedge_live.cli import main

    with pytest.raises(ConfigError, match="^run_timeout_s: must be 0 \\(no timeout\\) or a number of seconds in 1"):
        LiveConfig(run_timeout_s=seconds)
    if not isinstance(seconds, bool):
        assert main(["live", "--run-timeout", str(seconds), "--check"]) == 2
        assert "FAIL config: run_timeout_s:" in capsys.readouterr().out


@pytest.mark.parametrize("seconds", [None, 0, 0.0, 1, 1.0, 3, 600.0, 604800])
def test_run_timeout_off_or_at_least_a_second_is_accepted(seconds):
    assert LiveConfig(run_timeout_s=seconds).run_timeout_s == seconds


def test_maps_go_to_maps_dir_or_with_the_plots():
    assert LiveConfig().maps_folder() == "mnedge_maps"
    assert LiveConfig(plot_dir="p").maps_folder() == "p"  # --plot alone: maps and plots together
    assert LiveConfig(plot_dir="p", maps_dir="m").maps_folder() == "m"
    assert LiveConfig(plot_dir="p", maps_dir=None).maps_folder() is None


def test_empty_folders_turn_maps_and_plots_off(tmp_path):
    """The docstring (and the callback since c71d1d0) say None or "" writes none, but "" was refused:
    a TOML file, which has no None, could not turn the maps off."""
    p = tmp_path / "live.toml"
    p.write_text('[live]\nmaps_dir = ""\nplot_dir = ""\n')
    cfg = LiveConfig.from_sources(p)
    assert (cfg.maps_dir, cfg.plot_dir, cfg.maps_folder()) == ("", "", "")
    with pytest.raises(ConfigError, match="^maps_dir: "):
        LiveConfig(maps_dir=5)
