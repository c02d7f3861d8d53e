from pvebalance.cli import main

main()
