"""One model server: requests, scheduler and policies, KV cache manager, model runner, engine."""
