from sv_engine.cli import console_main

console_main()
