"""Local stand-ins for the services Lockgate guards, for ``lockgate demo`` and the tests.

Each package here is a stand-in written from the service's public API docs or protocol
spec, not the service: enough of Azure Cosmos DB (``cosmos``), Azure Data Factory over ARM
(``adf``), Databricks (``databricks``), Microsoft Entra ID's token endpoint (``entra``), an
Apache Cassandra node (``cqlserver``), a Kubernetes service-account issuer (``kubernetes``),
Azure Key Vault secrets (``key_vault``) and HashiCorp Vault's KV v2 with AppRole and JWT
login (``vault``) that the stock Airflow operators, SDKs and clients work against them
unchanged. They check credentials the way the services do, so the demo shows the
gateway holding the only key. Nothing in ``lockgate.gateway`` or below imports them.
"""
