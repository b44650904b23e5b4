"""The warehouse, through SQLAlchemy: the one package that reads and writes tables, and declares ours.

Split by job: `engine` (the handle), `tables` (our declared tables and generic reads and writes), `sources`
(reading a source table as stored), `batches` (ingest state: batch ledger, watermark, quarantine, landing a
batch), `locks` (one writer across processes and machines), `ledger` (the release ledger) and `predictions`
(the prediction log, labels and monitoring metrics). Every room imports the names it needs from here.
"""

from retrain.warehouse.batches import (
    find_passed_batch,
    read_batch_record,
    read_batches,
    read_clean_keys,
    read_clean_rows,
    read_clean_rows_by_key,
    read_known_fingerprints,
    read_quarantine,
    read_quarantined_fingerprints,
    read_watermark,
    record_batch,
)
from retrain.warehouse.engine import (
    WRITE_CHUNK_ROWS,
    Warehouse,
    create_warehouse_engine,
    get_warehouse,
    open_warehouse,
)
from retrain.warehouse.ledger import LedgerEntry, append_ledger_entry, read_ledger
from retrain.warehouse.locks import LockHolder, hold_lock, live_lock_holder, read_lock_holder
from retrain.warehouse.predictions import (
    append_new_predictions,
    count_predictions,
    prediction_key,
    read_labelled_predictions,
    read_monitoring_metric,
    read_prediction_features,
)
from retrain.warehouse.sources import (
    TableDescription,
    column_kind,
    count_rows_after,
    describe_table,
    read_source_rows,
    replace_source_rows,
)
from retrain.warehouse.tables import (
    BATCH_COLUMN,
    BATCH_LEDGER,
    LABEL_TABLE,
    LEDGER_TABLE,
    LOCK_TABLE,
    MONITORING_METRIC_TABLE,
    PASSED,
    PREDICTION_TABLE,
    append_rows,
    batch_ledger,
    clean_table,
    count_rows_between,
    create_declared_table,
    has_table,
    insert_new_rows,
    label_table,
    ledger_table,
    list_tables,
    lock_table,
    monitoring_metric_table,
    prediction_table,
    quarantine_table,
    read_newest_timestamp,
    read_table,
    read_window,
    reflect_table,
    write_frame,
)

__all__ = [
    "BATCH_COLUMN", "BATCH_LEDGER", "LABEL_TABLE", "LEDGER_TABLE", "LOCK_TABLE", "MONITORING_METRIC_TABLE", "PASSED",
    "PREDICTION_TABLE", "WRITE_CHUNK_ROWS", "LedgerEntry", "LockHolder", "TableDescription", "Warehouse",
    "append_ledger_entry", "append_new_predictions", "append_rows", "batch_ledger", "clean_table", "column_kind",
    "count_predictions", "count_rows_after", "count_rows_between", "create_declared_table", "create_warehouse_engine",
    "describe_table", "find_passed_batch", "get_warehouse", "has_table", "hold_lock", "insert_new_rows",
    "label_table", "ledger_table", "list_tables", "live_lock_holder", "lock_table", "monitoring_metric_table",
    "open_warehouse",
    "prediction_key", "prediction_table", "quarantine_table", "read_batch_record", "read_batches",
    "read_clean_keys", "read_clean_rows", "read_clean_rows_by_key", "read_quarantined_fingerprints",
    "read_known_fingerprints", "read_labelled_predictions", "read_ledger", "read_lock_holder",
    "read_monitoring_metric", "read_newest_timestamp", "read_prediction_features", "read_quarantine",
    "read_source_rows", "read_table", "replace_source_rows", "read_watermark", "read_window", "record_batch",
    "reflect_table",
    "write_frame",
]
