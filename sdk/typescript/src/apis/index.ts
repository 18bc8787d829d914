/* tslint:disable */
/* eslint-disable */
export * from './AuthApi';
export * from './EventsApi';
export * from './GuestsApi';
export * from './MetricsApi';
export * from './NodesApi';
export * from './OperationsApi';
export * from './PluginsApi';
export * from './ResourcesApi';
export * from './ScriptsApi';
export * from './SystemApi';
export * from './UsersApi';
