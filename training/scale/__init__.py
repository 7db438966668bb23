"""Training past one machine: Parquet datasets streamed in row-group shards, and data-parallel training.

What this subpackage owns:
- `stream`: a Parquet file, directory or hive-partitioned directory read as row-group pieces; each rank reads
  its own share, shuffled within a bounded buffer, so memory does not grow with the number of rows.
- `stats`: the one streaming pass that fits the categorical encoding (identical to `training.data`'s),
  the feature standardisation and the arm propensities.
- `ranks`: torch.distributed set-up from the `torchrun` environment (gloo on CPU, nccl on GPU) and the
  collectives the trainers use.
- `single` / `bilevel`: the streamed, data-parallel loops of the single-level methods (tsm, tsm-obs, DFCL)
  and of Bi-DFCL; `resume`: per-epoch checkpoints a restarted run continues from; `command`: the
  `python -m training train --stream` / `torchrun … -m training train` entry.

It writes no Redis keys; rank 0 alone writes the checkpoint and the per-epoch resume state.
One process without `torchrun` and without `--stream` never enters this package (`training.train` and
`training.bidfcl` as before).
"""
