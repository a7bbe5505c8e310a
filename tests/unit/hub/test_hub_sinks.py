"""What the hub says about a sink it cannot build: an MQTT ``ca_file`` that is not a file is the sink's
problem, named by its field before the engines load, never an output folder that "cannot be written"."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import parse_config
from pipeline.outputs.hub import RunOutputsError, check_outputs
from pipeline.outputs.sinks import Spool, sink_name
from tests.fixtures.hub_outputs import HubOutputs


def _mqtt(ca_file: Path) -> dict[str, object]:
    return {"kind": "mqtt", "host": "127.0.0.1", "tls": True, "ca_file": str(ca_file)}


def test_a_missing_mqtt_ca_file_stops_the_run_before_the_engines_naming_its_field(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    text = (
        f"output_dir: {tmp_path / 'out'}\n"
        "metrics: {enabled: false}\n"
        "ui: {enabled: false}\n"
        "sinks:\n"
        "  - {kind: jsonl}\n"
        f"  - {{kind: mqtt, host: 127.0.0.1, tls: true, ca_file: '{ca}'}}\n"
    )
    cfg = parse_config(text)
    with pytest.raises(RunOutputsError) as info:
        check_outputs(cfg)
    assert str(info.value) == (
        f"sinks[1].ca_file {ca} is not a file: point it at the broker's CA certificate (PEM), or remove it "
        "to verify the broker against the system CAs"
    )
    ca.mkdir()  # a folder is no certificate either
    with pytest.raises(RunOutputsError, match=r"sinks\[1\]\.ca_file"):
        check_outputs(cfg)
    ca.rmdir()
    ca.write_text("-----BEGIN CERTIFICATE-----\n")  # read by the sink's TLS connection, not here
    check_outputs(cfg)


def test_a_ca_file_gone_when_the_sinks_open_is_the_sinks_problem_and_frees_their_spools(
    tmp_path: Path, hub_outputs: HubOutputs
) -> None:
    """Removed between ``check_outputs`` and the hub: said as the sink's problem, and the JSON Lines sink
    built before it leaves its spool free for the next try."""
    ca = tmp_path / "ca.pem"
    sinks = [{"kind": "jsonl"}, _mqtt(ca)]
    with pytest.raises(RunOutputsError) as info:
        hub_outputs({}, sinks=sinks)
    assert str(info.value) == f"sinks: MQTT ca_file {ca} is not a file"
    jsonl = parse_config("sinks: [{kind: jsonl}]").sinks[0]
    Spool(tmp_path / "out" / "spool" / sink_name(jsonl, tmp_path / "out")).close()  # not "in use"
