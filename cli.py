"""fwp command line: ``python cli.py {fit,validate,test,predict} --config conf/....yaml``."""

from fwp.training.cli import main

if __name__ == "__main__":
    main()
