"""Data: corpus fetching and cleaning, BPE tokenizer, uint16 token shards and batch iterators."""
