from communs.cli import app

app()
