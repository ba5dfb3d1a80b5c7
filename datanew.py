"""Markov-chain data for the RWKV-ICL experiment: binary order-k chains, one transition table
per chain drawn from Dirichlet(beta), written as binidx (one chain per document) + meta.json
with the validation set's Bayes-optimal, oracle and lower-order losses.

    python datanew.py --order 2                    # -> data/markov-binidx/k2-beta1-len513-...

The default folder is named by every parameter, so data made with other parameters is never
mixed in or overwritten; an existing folder with the same parameters is reused as it is. The
folder appears only when complete (it is made as .<name>.partial beside it), so a killed run
leaves nothing in the way of the next one, and runs making the same folder at once wait for
each other.
"""

import argparse
import json
import sys

from conrwkv.data.markov import MAX_ORDER, MarkovDataParams, write_markov_dataset


def main(argv=None) -> int:
    d = MarkovDataParams()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--order", type=int, default=d.order, help=f"Markov order k (1..{MAX_ORDER}).")
    p.add_argument("--beta", type=float, default=d.beta,
                   help="Dirichlet / Beta(beta, beta) prior of each context's transition "
                        "probability, > 0 (1: uniform; 0.5: Jeffreys, more skewed tables).")
    p.add_argument("--seq-len", type=int, default=d.seq_len,
                   help="Symbols per chain (seq_len - 1 predictions; 513 gives 512).")
    p.add_argument("--n-train", type=int, default=d.n_train, help="Training chains (>= 1).")
    p.add_argument("--n-val", type=int, default=d.n_val, help="Validation chains (>= 1).")
    p.add_argument("--seed", type=int, default=d.seed, help="Random seed, >= 0 (deterministic output).")
    p.add_argument("--shared-table", action="store_true",
                   help="Use ONE transition table for every chain (the seed's variant). Warns: "
                        "it tests memorisation, not in-context learning.")
    p.add_argument("--out", default="",
                   help="Output folder (default: data/markov-binidx/<named by the parameters>).")
    p.add_argument("--print-folder", action="store_true",
                   help="Only print the folder these parameters use, then exit.")
    args = p.parse_args(argv)
    params = MarkovDataParams(order=args.order, beta=args.beta, seq_len=args.seq_len,
                              n_train=args.n_train, n_val=args.n_val, seed=args.seed,
                              shared_table=args.shared_table)
    out = args.out or params.default_folder()
    try:
        params.validate()
        if args.print_folder:
            print(out)
            return 0
        meta = write_markov_dataset(out, params)
    except (ValueError, OSError) as err:
        # Bad parameters and file problems are the user's to fix: one line, no traceback.
        print(f"datanew.py: error: {err}", file=sys.stderr)
        return 2
    print(f"{out}:")
    print(json.dumps(meta["val"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
