"""The smallest federated run the e2e tests use: seconds per round on 2 cores.

A plain module next to the tests (pytest's default import mode puts this directory on sys.path).
"""

TINY = [
    "federation.num_clients=4",
    "federation.clients_per_round=0.5",
    "federation.local_steps=1",
    "trainer.batch_prompts=4",
    "trainer.generations_per_prompt=2",
    "trainer.max_new_tokens=8",
    "data.max_eval_prompts=16",
    "runtime.num_cpus_per_worker=0.5",
]
