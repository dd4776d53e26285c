from laffi.cli import main

main()
