"""A discrete-event simulator of a Shunter cluster (`shunter bench sim`).

Nothing here schedules or routes: each simulated replica is the real `Engine` (scheduler,
policies, KV cache manager, block pool) over a runner whose step takes the time a cost model
says, on a virtual clock; the cluster places requests with the router's own policies, prefix
index, placement functions and `Rebalancer`. What is simulated is only time: how long a step, a
swap or a KV transfer takes.

`events` (the loop and the clocks), `costs` (step-time models), `runner` (the model runner
replaced), `replica` (one engine stepped by the loop), `cluster` (the router's side), `metrics`
(what a run measured), `experiments` and `report` (the tables, plots and docs/results.md).
"""
