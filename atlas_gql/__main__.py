from atlas_gql.cli import main

main()
