"""The decision loop's online half (DESIGN.md §10): exploration and the decision log.

- `exploration`: the ε-share of decisions drawn uniformly among allowed treatments, and their propensities.
- `epsilon`: ε per campaign, set by an operator (Redis hash `<prefix>:exploration`).
- `record`: one logged allocation batch and its Redis Stream entry (format 2: one entry per request).
- `buffer`: the bounded, thread-safe in-process buffer /allocate appends to.
- `shipper`: the background task that ships the buffer to the per-campaign streams `<prefix>:decisions:<campaign>`.
- `sink`: the separate process (`python -m service.sink`) that writes the streams to Parquet (needs pyarrow).
"""
