"""Training's parts around the Learner's loop (learner.py): checkpoints, the run log, the LR schedule,
process groups, and the hooks the loop calls (evaluation + best model, checkpointing, logging, the LR
range test). See ARCHITECTURE.md."""
