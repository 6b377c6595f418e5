from semdir_edit.cli.main import main

main()
