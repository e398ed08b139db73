"""fedtrain.federation.records reads what Flower's typed views read, without building them."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedtrain.federation.exchange.held_arrays import HeldArray, read_only_values
from fedtrain.federation.records import record_of, records_of


def _content() -> RecordDict:
    return RecordDict(
        {
            "arrays": ArrayRecord([np.ones(3, dtype=np.float32)]),
            "metrics": MetricRecord({"loss": 0.5}),
            "config": ConfigRecord({"lr": 0.1}),
            "more-metrics": MetricRecord({"acc": 0.9}),
        }
    )


def test_records_of_equals_flowers_views_in_order():
    content = _content()
    assert list(records_of(content, MetricRecord)) == list(content.metric_records) == ["metrics", "more-metrics"]
    assert records_of(content, ConfigRecord) == dict(content.config_records)
    assert records_of(content, ArrayRecord) == dict(content.array_records)


def test_record_of_is_none_for_a_record_of_another_type_or_a_missing_key():
    content = _content()
    assert record_of(content, "config", ConfigRecord) is content["config"]
    assert record_of(content, "config", MetricRecord) is None
    assert record_of(content, "absent", ConfigRecord) is None


def test_read_only_values_of_a_held_array_is_its_memory_and_numpy_still_copies():
    values = np.arange(4, dtype=np.float32)
    held = HeldArray.of(values)
    assert np.shares_memory(read_only_values(held), values)
    assert not np.shares_memory(held.numpy(), values)
    plain = next(iter(ArrayRecord([values]).values()))
    np.testing.assert_array_equal(read_only_values(plain), values)
