"""The CI check on carrier mapping tables: no raw code maps to two statuses in any built-in
table, every row maps to a canonical status, and the registry and plugin discovery expose
the built-in connectors."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from ordersync.adapters.carriers import base, generic, kdniao, kuaidi100
from ordersync.config import ConfigError, load_settings, settings_from_mapping
from ordersync.domain.shipments import CodeMapping, MappingTable, ShipmentStatus, find_conflicts

TABLES = {"kdniao": kdniao.CODES, "kuaidi100": kuaidi100.CODES, "generic": generic.CODES}


@pytest.mark.parametrize("kind", sorted(TABLES))
def test_no_raw_code_maps_to_two_statuses_in_a_built_in_table(kind: str) -> None:
    """The rows as written in the source, before any dict could hide a duplicate."""
    assert find_conflicts(TABLES[kind]) == {}


@pytest.mark.parametrize("kind", sorted(TABLES))
def test_every_row_is_listed_once_and_maps_to_a_canonical_status(kind: str) -> None:
    """No code listed twice (even to the same status), each with a description."""
    rows = TABLES[kind]
    codes = [r.raw_code for r in rows]
    assert len(codes) == len(set(codes))
    assert all(isinstance(r.status, ShipmentStatus) and r.description for r in rows)


@pytest.mark.parametrize("kind", sorted(TABLES))
def test_each_connector_serves_its_own_table(kind: str) -> None:
    """The registry's connector for a kind uses the checked table."""
    connector = base.connector_for(kind)
    assert connector.kind == kind
    assert connector.mapping.rows == TABLES[kind]
    assert isinstance(connector, base.CarrierConnector)


def test_an_override_that_would_create_a_conflict_is_impossible() -> None:
    """Overrides replace rows, so a configured table is conflict-free by construction."""
    table = kdniao.MAPPING.with_overrides({"3": "returned", "999": "exception"})
    assert find_conflicts(table.rows) == {}
    assert table.lookup("3") is ShipmentStatus.RETURNED


def test_a_duplicated_row_in_a_new_table_fails_loudly() -> None:
    """Building a table with a raw code mapped twice raises with the code named."""
    rows = [CodeMapping("x", ShipmentStatus.DELIVERED), CodeMapping("x", ShipmentStatus.EXCEPTION)]
    with pytest.raises(ValueError, match="'x'"):
        MappingTable.from_rows("bad", rows)


class _PluginConnector(generic.GenericConnector):
    kind = "acme"


def test_plugins_are_discovered_by_entry_point_and_checked() -> None:
    """A plugin under ordersync.carriers loads; a wrong kind or a non-connector is refused."""
    good = EntryPoint("acme", f"{__name__}:_PluginConnector", base.PLUGIN_GROUP)
    found = base.discover(found=lambda: [good])
    assert list(found) == ["acme"]
    assert found["acme"].kind == "acme"
    shadow = EntryPoint("kdniao", f"{__name__}:_PluginConnector", base.PLUGIN_GROUP)
    assert base.discover(found=lambda: [shadow]) == {}
    wrong = EntryPoint("other", f"{__name__}:_PluginConnector", base.PLUGIN_GROUP)
    with pytest.raises(base.PluginError, match="declares kind"):
        base.discover(found=lambda: [wrong])
    junk = EntryPoint("junk", "json:dumps", base.PLUGIN_GROUP)
    with pytest.raises(base.PluginError, match="not a CarrierConnector"):
        base.discover(found=lambda: [junk])


def test_an_unknown_kind_has_no_connector() -> None:
    """Asking for a kind nobody provides is a clear error."""
    with pytest.raises(base.PluginError, match="no connector"):
        base.connector_for("pigeon-post")


CARRIER_YAML = """
carriers:
  - id: kd100-yt
    kind: kuaidi100
    endpoint: https://poll.kuaidi100.example.test
    mapping:
      "3": delivered
      "999": exception
      "3": returned
"""


def test_a_configured_mapping_that_maps_one_raw_code_to_two_statuses_is_refused_at_load(
    tmp_path: Path,
) -> None:
    """YAML would keep the last of two equal keys silently; the loader refuses the file and
    names the code and its line."""
    path = tmp_path / "ordersync.yaml"
    path.write_text(CARRIER_YAML, encoding="utf-8")

    with pytest.raises(ConfigError, match=r"duplicate key '3' \(line 9"):
        load_settings(path, env={})


def test_a_configured_mapping_with_each_raw_code_once_overrides_the_built_in_table(
    tmp_path: Path,
) -> None:
    """The same file without the repeat loads, and the carrier's table has no conflict."""
    path = tmp_path / "ordersync.yaml"
    path.write_text(CARRIER_YAML.replace('      "3": returned\n', ""), encoding="utf-8")

    [carrier] = load_settings(path, env={}).carriers
    table = kuaidi100.MAPPING.with_overrides(carrier.mapping)

    assert find_conflicts(table.rows) == {}
    assert table.lookup("999") is ShipmentStatus.EXCEPTION


def test_a_configured_mapping_to_a_status_that_does_not_exist_is_refused_with_its_path() -> None:
    """A typo in a canonical status fails at start-up, naming the carrier's key."""
    raw = {
        "carriers": [
            {
                "id": "kd100-yt",
                "kind": "kuaidi100",
                "endpoint": "https://poll.kuaidi100.example.test",
                "mapping": {"3": "deliverd"},
            }
        ]
    }
    with pytest.raises(ConfigError, match=r"carriers\[0\]\.mapping\.3"):
        settings_from_mapping(raw, env={})
