from imprinting.cli import main

main()
