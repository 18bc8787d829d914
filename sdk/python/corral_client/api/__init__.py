# flake8: noqa

# import apis into api package
from corral_client.api.auth_api import AuthApi
from corral_client.api.events_api import EventsApi
from corral_client.api.guests_api import GuestsApi
from corral_client.api.metrics_api import MetricsApi
from corral_client.api.nodes_api import NodesApi
from corral_client.api.operations_api import OperationsApi
from corral_client.api.plugins_api import PluginsApi
from corral_client.api.resources_api import ResourcesApi
from corral_client.api.scripts_api import ScriptsApi
from corral_client.api.system_api import SystemApi
from corral_client.api.users_api import UsersApi

