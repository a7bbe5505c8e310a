"""The config schema: strictness, bounds, per-camera overrides, and file/line/field errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.config import ConfigError, load_config, parse_config, resolve_data_path, zone_overrides_path
from tests.conftest import REPO

BASE = """\
version: 1
cameras:
  - id: cam-a
    uri: rtsp://user:secret@10.0.0.5/stream
    context: parking
  - id: cam-b
    uri: file:///videos/b.mp4
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "site.yaml"
    p.write_text(text)
    return p


def test_default_config_is_valid() -> None:
    cfg = load_config(REPO / "configs" / "default.yaml")
    assert len(cfg.enabled_cameras()) == 4
    assert {c.context for c in cfg.enabled_cameras()} >= {"campus", "parking"}


def test_per_camera_override_wins_over_defaults() -> None:
    cfg = parse_config(BASE + "    alerts: {on_threshold: 9.0, off_threshold: 1.0}\n")
    a, b = cfg.camera_settings("cam-a"), cfg.camera_settings("cam-b")
    assert a.context == "parking"
    assert b.context == cfg.defaults.context
    assert b.alerts.on_threshold == 9.0
    assert a.alerts.on_threshold == cfg.defaults.alerts.on_threshold


def test_a_camera_block_is_laid_over_the_defaults_key_by_key(tmp_path: Path) -> None:
    """README's example: the site's alert timing in `defaults`, one camera with its own thresholds only.
    The camera keeps the site's timing (a whole-block replacement would silently give it the schema's)."""
    site = (
        "defaults:\n"
        "  alerts: {on_threshold: calibrated, off_threshold: 1.0, min_duration_s: 0.4, cooldown_s: 3.0}\n"
        "  rtsp: {latency_ms: 500, reconnect_max_s: 50}\n"
        "cameras:\n"
        "  - id: gate-1\n"
        "    uri: rtsp://10.0.0.5/stream\n"
        "    alerts: {on_threshold: 1.5}\n"  # below the schema's off_threshold 2.0, above the site's 1.0
        "    rtsp: {reconnect_initial_s: 40}\n"  # above the schema's cap 30, below the site's 50
        "  - id: gate-2\n"
        "    uri: rtsp://10.0.0.6/stream\n"
    )
    cfg = parse_config(site)
    one, two = cfg.camera_settings("gate-1"), cfg.camera_settings("gate-2")
    assert one.alerts.model_dump() == {
        "on_threshold": 1.5,
        "off_threshold": 1.0,
        "min_duration_s": 0.4,
        "cooldown_s": 3.0,
        "smoothing": 3,
    }
    assert (one.rtsp.latency_ms, one.rtsp.reconnect_initial_s, one.rtsp.reconnect_max_s) == (500, 40.0, 50.0)
    assert two.alerts == cfg.defaults.alerts
    assert type(one.alerts) is type(cfg.defaults.alerts)  # the merged block, checked as the defaults' are
    # The merged block must hold together, and the error names the camera's block and line.
    path = _write(tmp_path, site.replace("on_threshold: 1.5}", "on_threshold: 0.5}"))
    with pytest.raises(
        ConfigError,
        match=rf"{path}:7: cameras\[0\]\.alerts: off_threshold 1.0 must not exceed on_threshold 0.5",
    ):
        load_config(path)
    path = _write(tmp_path, site.replace("reconnect_initial_s: 40}", "reconnect_max_s: 0.5}"))
    # A cap given alone, below the first wait: the backoff is the cap throughout, as before.
    assert load_config(path).camera_settings("gate-1").rtsp.reconnect_initial_s == 0.5
    path = _write(tmp_path, site.replace("reconnect_initial_s: 40}", "reconnect_initial_s: 55}"))
    with pytest.raises(
        ConfigError, match=r"cameras\[0\]\.rtsp\.reconnect_initial_s: 55.0 is above reconnect_max_s 50"
    ):
        load_config(path)


def test_a_cap_alone_in_the_defaults_is_not_handed_to_the_cameras_as_a_first_wait() -> None:
    """The defaults' backoff clamp (a cap below the default first wait) is not a setting: a camera with its
    own cap keeps its own backoff, and a dump of the config reloads to the same settings."""
    from core.config import ZsadConfig

    cfg = parse_config(
        "defaults:\n"
        "  rtsp: {reconnect_max_s: 0.5}\n"
        "  alerts: {on_threshold: calibrated, off_threshold: 1.0, cooldown_s: 60}\n"
        "cameras:\n"
        "  - {id: a, uri: rtsp://h/a, rtsp: {reconnect_max_s: 0.2}, alerts: {on_threshold: 1.5}}\n"
        "  - {id: b, uri: rtsp://h/b, rtsp: {reconnect_max_s: 20}}\n"
        "  - {id: c, uri: rtsp://h/c}\n"
    )
    backoff = {c: cfg.camera_settings(c).rtsp for c in "abc"}
    assert {c: (r.reconnect_initial_s, r.reconnect_max_s) for c, r in backoff.items()} == {
        "a": (0.2, 0.2),
        "b": (1.0, 20.0),
        "c": (0.5, 0.5),
    }
    again = ZsadConfig.model_validate(cfg.model_dump(mode="json"))
    for c in "abc":
        assert again.camera_settings(c) == cfg.camera_settings(c), c
    assert again.camera_settings("a").alerts.cooldown_s == 60.0  # the site's, not the schema's


def test_fusion_rule_per_camera_with_a_default(tmp_path: Path) -> None:
    cfg = parse_config(
        "defaults:\n  fusion: {rule: mean}\n" + BASE[len("version: 1\n") :] + "    fusion: {rule: max}\n"
    )
    assert cfg.camera_settings("cam-a").fusion.rule == "mean"
    assert cfg.camera_settings("cam-b").fusion.rule == "max"
    assert parse_config(BASE).camera_settings("cam-a").fusion.rule == "auto"
    path = _write(tmp_path, BASE + "    fusion: {rule: sum}\n")
    with pytest.raises(
        ConfigError, match=rf"{path}:8: cameras\[1\]\.fusion\.rule: .*'auto', 'max' or 'mean'"
    ):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config(BASE + "    fusion: {rule: max, temperature: 2}\n")


@pytest.mark.parametrize(
    ("snippet", "line", "field", "needle"),
    [
        # unknown key, nested under a camera
        ("    colour: red\n", 8, "cameras[1].colour", "unknown key"),
        # wrong type
        ("    sampling: {fps: fast}\n", 8, "cameras[1].sampling.fps", "number"),
        # out of range
        ("    sampling: {fps: 1000}\n", 8, "cameras[1].sampling.fps", "less than or equal"),
    ],
)
def test_bad_values_name_file_line_field(
    tmp_path: Path, snippet: str, line: int, field: str, needle: str
) -> None:
    path = _write(tmp_path, BASE + snippet)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert f"{path}:{line}: {field}:" in msg, msg
    assert needle in msg


def test_unknown_top_level_key_points_at_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "version: 1\noutput_dir: out\nbogus: 3\n")
    with pytest.raises(ConfigError, match=rf"{path}:3: bogus: unknown key"):
        load_config(path)


def test_hysteresis_and_duplicates_are_refused() -> None:
    with pytest.raises(ConfigError, match="off_threshold"):
        parse_config("defaults:\n  alerts: {on_threshold: 1.0, off_threshold: 2.0}\n")
    # At the second camera's id, not at line 1 with no field (a whole-config check).
    with pytest.raises(
        ConfigError, match=r"^x.yaml:3: cameras\[1\]\.id: camera id 'a' appears more than once$"
    ):
        parse_config("cameras:\n  - {id: a, uri: 'file:///x'}\n  - {id: a, uri: 'file:///y'}\n", "x.yaml")


def test_a_key_given_twice_is_refused_at_its_second_line() -> None:
    """YAML keeps the last of two equal keys without a word; a config that gives fps twice is a mistake."""
    text = "output_dir: a\ncameras:\n  - id: a\n    uri: file:///x\n    uri: file:///y\noutput_dir: b\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "x.yaml")
    assert str(info.value).splitlines() == [
        "x.yaml:5: cameras[0].uri: given twice (first at line 4); YAML would silently keep the last",
        "x.yaml:6: output_dir: given twice (first at line 1); YAML would silently keep the last",
    ]


def test_context_names_and_their_prompt_sets_are_checked_where_they_are_written() -> None:
    """A context names files (its prompt embeddings) and has one prompt set: refused by validate at the
    field, not later by the engine build without a line."""
    with pytest.raises(ConfigError, match=r"x.yaml:2: defaults\.context: .*'parking lot' must match"):
        parse_config("defaults:\n  context: parking lot\n", "x.yaml")
    two_sets = (
        "cameras:\n  - {id: a, uri: 'file:///x', context: lot}\n"
        "  - {id: b, uri: 'file:///y', context: lot, prompts: other}\n"
    )
    with pytest.raises(ConfigError, match=r"x.yaml:3: cameras\[1\]\.prompts: context 'lot' is used with two"):
        parse_config(two_sets, "x.yaml")
    parse_config(two_sets.replace("context: lot, prompts: other", "context: lot, prompts: lot"))


def test_an_appearance_frame_size_error_names_the_size_field() -> None:
    with pytest.raises(ConfigError, match=r"x.yaml:3: model\.backbone\.image_height: appearance\.enabled"):
        parse_config("model:\n  backbone:\n    image_height: 136\n    patch_size: 8\n", "x.yaml")


def test_on_threshold_calibrated_is_the_one_word_it_takes(tmp_path: Path) -> None:
    cfg = parse_config(BASE + "    alerts: {on_threshold: calibrated, off_threshold: 5.0}\n")
    # The calibration's number is known at run time, which closes at min(off, on): no hysteresis check here.
    assert cfg.camera_settings("cam-b").alerts.on_threshold == "calibrated"
    assert cfg.camera_settings("cam-a").alerts.on_threshold == 3.0
    for bad, shown in (("auto", "'auto'"), ("2000", "2000"), ("'3.5'", "'3.5'")):
        path = _write(tmp_path, BASE + f"    alerts: {{on_threshold: {bad}}}\n")
        with pytest.raises(ConfigError) as info:
            load_config(path)
        # One line, under the field's own name (not one per member of the type's union).
        errors = [line.strip() for line in str(info.value).splitlines() if "on_threshold" in line]
        assert errors == [
            f"{path}:8: cameras[1].alerts.on_threshold: Value error, must be a number from -100 to 1000 or "
            f"'calibrated', got {shown}"
        ]


def test_a_decoder_prior_needs_the_pixel_decoder(tmp_path: Path) -> None:
    text = "version: 1\nmodel:\n  dpc:\n    decode_pixels: false\n    decoder: extrapolate\n"
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"{path}:3: model.dpc: .*decoder extrapolate needs decode_pixels"):
        load_config(path)
    assert parse_config(text.replace("extrapolate", "residual")).model.dpc.decode_pixels is False


def test_bad_uri_scheme_and_camera_id() -> None:
    with pytest.raises(ConfigError, match=r"cameras\[0\]\.uri"):
        parse_config("cameras:\n  - {id: a, uri: 'ftp://x'}\n")
    # A scheme zsad reads but nothing usable after it: refused here, as the graphs would refuse it.
    for uri, why in (
        ("file://", "has no path"),
        ("loop://", "has no path"),
        ("rtsp:///", "has no host"),
        ("v4l2://video0", "must look like v4l2:///dev/videoN"),
        ("cam1.mp4", "has no scheme"),
    ):
        with pytest.raises(ConfigError, match=rf"cameras\[0\]\.uri: .*{why}"):
            parse_config(f"cameras:\n  - {{id: a, uri: '{uri}'}}\n")
    with pytest.raises(ConfigError, match=r"cameras\[0\]\.id"):
        parse_config("cameras:\n  - {id: '../etc', uri: 'file:///x'}\n")


def test_a_name_with_a_trailing_newline_is_refused() -> None:
    """Python's ``$`` also matches before a final newline: ``id: "cam1\\n"`` passed the id rule and named the
    events folder ``cam1_``, the folder of a camera named ``cam1_``."""
    with pytest.raises(ConfigError, match=r"^x.yaml:2: cameras\[0\]\.id: .*'cam1\\n' must match"):
        parse_config('cameras:\n  - {id: "cam1\\n", uri: "file:///x"}\n', "x.yaml")
    with pytest.raises(ConfigError, match=r"^x.yaml:2: defaults\.context: .*'lot\\n' must match"):
        parse_config('defaults:\n  context: "lot\\n"\n', "x.yaml")
    with pytest.raises(ValueError, match="must match"):
        zone_overrides_path("out", "cam1\n")
    assert zone_overrides_path("out", "cam1") == Path("out/overrides/cam1.yaml")


def test_invalid_yaml_reports_line() -> None:
    with pytest.raises(ConfigError, match=r"x.yaml:2: invalid YAML"):
        parse_config("a: 1\n b: [\n", "x.yaml")


def test_sink_union_is_discriminated() -> None:
    cfg = parse_config("sinks:\n  - {kind: mqtt, port: 1884}\n  - {kind: webhook, url: 'https://h/x'}\n")
    assert [s.kind for s in cfg.sinks] == ["mqtt", "webhook"]
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.port"):
        parse_config("sinks:\n  - {kind: mqtt, port: 70000}\n")


def test_a_bad_sink_field_is_reported_at_its_own_line() -> None:
    """Pydantic puts a sink's kind in the error's location (sinks, 1, mqtt, port): the line must still be
    the bad field's, not the sink item's, and an unknown key spelled like a kind is still named."""
    text = (
        "sinks:\n"
        "  - kind: jsonl\n"
        "    mqtt: 1\n"
        "  - kind: mqtt\n"
        "    host: broker\n"
        "\n"
        "    port: 70000\n"
        "  - kind: webhook\n"
        "    url: ftp://x\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, "site.yaml")
    assert str(info.value).splitlines() == [
        "site.yaml:3: sinks[0].mqtt: unknown key (not allowed here)",
        "site.yaml:7: sinks[1].port: Input should be less than or equal to 65535",
        "site.yaml:9: sinks[2].url: String should match pattern '^https?://'",
    ]


def test_an_mqtt_ca_file_without_tls_is_refused_at_its_line() -> None:
    """A CA file is only used over TLS: without tls: true the password would go out in plaintext while the
    config looks secured."""
    text = "sinks:\n  - kind: mqtt\n    host: broker\n    password: s3cret\n    ca_file: /etc/ca.pem\n"
    for tls in ("", "    tls: false\n"):
        with pytest.raises(ConfigError) as info:
            parse_config(text + tls, "site.yaml")
        assert str(info.value).startswith(
            "site.yaml:5: sinks[0].ca_file: ca_file is set but tls is not: the connection (and its username "
            "and password) would be plaintext"
        ), str(info.value)
    (sink,) = parse_config(text + "    tls: true\n").sinks
    assert sink.kind == "mqtt"
    assert sink.tls
    assert sink.ca_file == "/etc/ca.pem"


def _validate(path: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli.main", "validate", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_validate_command_exit_codes(tmp_path: Path) -> None:
    ok = _validate(REPO / "configs" / "default.yaml")
    assert ok.returncode == 0, ok.stderr
    bad = _validate(_write(tmp_path, BASE + "    sampling: {fps: -1}\n"))
    assert bad.returncode == 2
    assert "site.yaml:8: cameras[1].sampling.fps" in bad.stderr
    missing = _validate(tmp_path / "nope.yaml")
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr


def test_resolve_data_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ZSAD_DATA_ROOT", str(tmp_path / "shared"))
    (tmp_path / "out" / "synth").mkdir(parents=True)
    assert resolve_data_path("out/synth") == Path("out/synth")  # generated here: the working directory
    assert resolve_data_path("ucsd_ped2") == tmp_path / "shared" / "ucsd_ped2"  # benchmark data
    assert resolve_data_path("/abs/data") == Path("/abs/data")


def test_validate_says_where_a_calibrated_threshold_falls_back(tmp_path: Path) -> None:
    from pipeline.cli.validate import config_warnings
    from plugins.fusion import Calibration, StreamStats, save_calibration

    stats = {"pixel": StreamStats(0.0, 1.0, 100)}
    save_calibration(Calibration(streams=stats, threshold=4.0, threshold_smoothing=3), tmp_path / "ok.json")
    save_calibration(Calibration(streams=stats, threshold=None), tmp_path / "none.json")
    save_calibration(Calibration(streams=stats, threshold=4.0, threshold_smoothing=1), tmp_path / "raw.json")
    cams = "".join(
        f"  - {{id: {name}, uri: 'rtsp://h/s'{f', calibration: {tmp_path / file}' if file else ''}{extra}}}\n"
        for name, file, extra in (
            ("a", "ok.json", ""),
            ("b", "none.json", ""),
            ("c", "raw.json", ""),
            ("d", "", ""),
            ("e", "ok.json", ", fusion: {rule: mean}"),  # the calibration's own rule
            ("f", "ok.json", ", fusion: {rule: max}"),  # not the rule its threshold was computed for
        )
    )
    fallback = "alerts will open at 3 until it is calibrated"
    cfg = parse_config(f"defaults:\n  alerts: {{on_threshold: calibrated, smoothing: 3}}\ncameras:\n{cams}")
    cameras = [w for w in config_warnings(cfg) if w.startswith("camera ")]  # not the engines' warnings
    assert cameras == [
        f"camera b: its calibration {tmp_path / 'none.json'} has no threshold: {fallback}",
        "camera c: its calibration threshold 4.000 was computed for alerts.smoothing 1, the camera smooths "
        "3: recalibrate for the false-alarm rate the threshold stands for",
        f"camera d: on_threshold is 'calibrated' but it has no calibration file: {fallback}",
        "camera f: its calibration threshold 4.000 was computed for the fusion rule mean, the camera fuses "
        "by max: set a number for alerts.on_threshold, or the rule back to auto",
    ]
    numeric = parse_config(f"defaults:\n  alerts: {{on_threshold: 3.0}}\ncameras:\n{cams}")
    assert [w for w in config_warnings(numeric) if w.startswith("camera ")] == []


def test_a_sink_without_kind_and_a_backoff_upside_down_say_what_to_write() -> None:
    with pytest.raises(ConfigError, match=r"^x.yaml:2: sinks\[0\]: needs kind: jsonl, mqtt or webhook$"):
        parse_config("sinks:\n  - {path: a.jsonl}\n", "x.yaml")
    with pytest.raises(ConfigError, match=r"x.yaml:3: defaults\.rtsp\.reconnect_initial_s: 60.0 is above"):
        parse_config("defaults:\n  rtsp:\n    reconnect_initial_s: 60\n    reconnect_max_s: 1\n", "x.yaml")


def test_a_review_page_on_the_network_without_a_login_is_said(tmp_path: Path) -> None:
    from pipeline.cli.validate import config_warnings

    for host, login, said in (
        ("0.0.0.0", False, True),
        ("192.168.1.20", False, True),
        ("0.0.0.0", True, False),
        ("127.0.0.1", False, False),
        ("localhost", False, False),
    ):
        auth = ", username: op, password: pw" if login else ""
        cfg = parse_config(f"output_dir: {tmp_path}\nui: {{host: '{host}'{auth}}}\n")
        warnings = [w for w in config_warnings(cfg) if "without a login" in w]
        assert bool(warnings) is said, (host, login)


def test_a_self_referring_yaml_alias_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_config("defaults: &d {x: *d}\n")


def test_a_reconnect_cap_below_the_default_first_wait_is_the_wait_throughout() -> None:
    rtsp = parse_config("defaults:\n  rtsp: {reconnect_max_s: 0.5}\n").defaults.rtsp
    assert (rtsp.reconnect_initial_s, rtsp.reconnect_max_s) == (0.5, 0.5)


def test_the_metrics_endpoint_and_the_review_page_need_a_port_each() -> None:
    with pytest.raises(ConfigError, match=r"x.yaml:2: metrics\.port: 8080 is ui.port too"):
        parse_config("metrics:\n  port: 8080\n", "x.yaml")
    with pytest.raises(ConfigError, match=r"metrics\.port: 9000 is ui.port too"):
        parse_config("metrics: {port: 9000, host: 0.0.0.0}\nui: {port: 9000}\n", "x.yaml")
    parse_config("metrics: {port: 8080, enabled: false}\n")  # only one of them serves
    parse_config("metrics: {port: 0}\nui: {port: 0}\n")  # each picks a free port
    parse_config("metrics: {port: 9000, host: 10.0.0.2}\nui: {port: 9000, host: 10.0.0.3}\n")  # two addresses


def test_appearance_spacing_is_seconds_of_video_in_whole_clips() -> None:
    """appearance.spacing_s in a camera's clips: the same seconds at any sampling rate, at least one clip."""
    from core.config import AppearanceConfig

    default = AppearanceConfig()
    # Clips 8 sampled frames apart: 0.8 s at 10 fps (every 2nd clip, as the quality was measured), 0.32 s
    # at 25 fps (every 5th), 1.6 s at 5 fps (every one).
    assert [default.clips_per_encoding(fps, 8) for fps in (10, 25, 5, 12.5)] == [2, 5, 1, 3]
    assert AppearanceConfig(spacing_s=0).clips_per_encoding(25, 8) == 1
    assert AppearanceConfig(spacing_s=1.2).clips_per_encoding(10, 8) == 2  # 1.5 clips: half rounds up
    with pytest.raises(ValueError, match="fps"):
        default.clips_per_encoding(0, 8)


def test_each_camera_counts_its_appearance_clips_at_its_own_sampling_rate() -> None:
    """The one place the run and the DeepStream app take a camera's count from."""
    cfg = parse_config(BASE + "    sampling: {fps: 25}\n")  # cam-b at 25 fps, cam-a at the default 10
    assert cfg.model.preprocess.clip_hop == 8
    assert [cfg.appearance_clips(c) for c in cfg.enabled_cameras()] == [2, 5]


def test_the_old_appearance_every_clips_key_says_what_replaced_it() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("version: 1\nappearance:\n  every_clips: 2\n", "x.yaml")
    message = str(info.value)
    assert message.startswith("x.yaml:2: appearance: ")
    assert "every_clips was replaced by spacing_s" in message
    assert "spacing_s 1.6" in message
