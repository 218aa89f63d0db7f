"""``manage.py dbshell`` for the dbha MySQL backend: the mysql client to the
endpoint the agent chose for the alias's role (in read-only mode, a read-only
session on the read endpoint)."""

from django.db.backends.mysql.client import DatabaseClient as MysqlClient

from .._shell import client_env, run_client


class DatabaseClient(MysqlClient):
    def runshell(self, parameters):
        choice = self.connection.dbha_choose()
        endpoint = choice.endpoint
        settings_dict = {**self.connection.settings_dict, "HOST": endpoint.host,
                         "PORT": endpoint.port}
        args, env = self.settings_to_cmd_args_env(settings_dict, parameters)
        if choice.read_only:
            # No database takes writes now: a read-only session on the read one.
            args.insert(1, "--init-command=SET SESSION TRANSACTION READ ONLY")
        run_client(args, client_env(env))
