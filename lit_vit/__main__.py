import sys

from lit_vit.commands import top_level_help

if __name__ == "__main__":
    if sys.argv[1:] in ([], ["-h"], ["--help"]):
        # answered without importing Lightning (seconds); a bare `python -m lit_vit` shows the same help
        print(top_level_help())
        sys.exit(0)
    from lit_vit.cli import main

    main()
