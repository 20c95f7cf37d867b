"""Controlled experiments: seeded multi-run comparisons built on the Learner and the evaluation breakdowns.

`python experiments/pgaml_vs_arcface.py --config experiments/pgaml_vs_arcface.yaml --profile cpu|gpu`: ArcFace
against PGAML variants, every arm trained from the same seeded start for the same number of steps, every run
broken down by pose and resolution, the arms compared paired over seeds (`experiments.plan` reads the YAML,
`experiments.runs` trains and evaluates one run, `experiments.seeded_report` writes the report).
"""
