"""Training a model: the entry point train(config, dist) (trainer.py), the train step (train_step.py),
optimisers and learning-rate schedules (optim.py, lr_schedules.py), the step log and sink plan (step_log.py),
stop signals (signals.py), what a checkpoint holds to resume (state.py), the run's folder and record
(run_folder.py, run_record.py).

Sits on models/, data/, checkpoints/, cluster/ and evaluation.py (validation).
"""
