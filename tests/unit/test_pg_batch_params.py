"""The PostgreSQL stock path sends each column as one text parameter when that is safe."""

from ordersync.adapters.db.pg_batch import cast as _cast
from ordersync.adapters.db.pg_batch import param as _param


def test_plain_columns_travel_as_one_joined_text() -> None:
    assert _param(["a", "b", "c"]) == "a\x1fb\x1fc"
    assert _param([1, 22, 333]) == "1\x1f22\x1f333"
    assert _param(["x", None, 3]) == "x\x1f\x1e\x1f3"
    assert (
        _cast("a\x1fb", "bigint", 2) == "CAST(string_to_array($2, E'\\x1f', E'\\x1e') AS bigint[])"
    )
    assert _cast("a\x1fb", "text", 1) == "string_to_array($1, E'\\x1f', E'\\x1e')"


def test_values_that_would_be_misread_fall_back_to_a_typed_array() -> None:
    for values in (["sku\x1fodd", "b"], ["a", "null\x1e"], [""], ["\x1e"]):
        assert _param(values) == values
        assert _cast(_param(values), "text", 1) == "CAST($1 AS text[])"
