"""``python -m hpcbatch.head --config FILE``: run the head daemon."""

import argparse
import sys

from hpcbatch.head.daemon import main

parser = argparse.ArgumentParser(prog="hpcbatch-head", description="Run the hpcbatch head daemon.")
parser.add_argument("--config", required=True, help="path of the head's TOML config file")
parser.add_argument("--store", help="the store, replacing the config's: a postgresql:// URL or a SQLite path")
args = parser.parse_args()
sys.exit(main(args.config, store=args.store))
