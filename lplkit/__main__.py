from lplkit.cli.app import main

main()
