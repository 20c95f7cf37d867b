"""Training entry point (`python train.py -n ir_se -b 200 ...`).

Training arrives with the Learner issue; until then this says so instead of pretending to train.
"""
import sys

if __name__ == "__main__":
    print("train.py: training is not implemented yet (it arrives with the Learner/train.py issue); "
          "the data layer is ready: see `python data/prepare_data.py -h` and `python data/synthetic.py -h`.",
          file=sys.stderr)
    sys.exit(2)
