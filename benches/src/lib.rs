//! pktgen-style throughput harness. Filled by the benchmark work; exports nothing yet.
