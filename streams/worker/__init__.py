"""The worker: the faust app, the join rules, its RocksDB state, expiry and the aggregates."""
