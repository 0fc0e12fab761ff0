from sv_engine.cli import main

main()
