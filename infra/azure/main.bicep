// intune-attest on Azure Functions Flex Consumption (a custom handler):
// the storage account with the work queue and the state container, a
// user-assigned managed identity holding exactly the roles it needs,
// Application Insights, the app settings, and the instance cap.
//
// Kept to the Bicep that checkov's parser reads (no `import`, user-defined
// functions, spread or lambdas): scripts/lint-template fails when checkov
// reports a parsing error or scans no resource.

@description('Name of the function app; the other resources are named after it.')
@minLength(3)
@maxLength(40)
param name string = 'intune-attest'

@description('Region of every resource.')
param location string = resourceGroup().location

@description('Most instances the platform may run at once; they all draw on one shared budget.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 10

@description('Memory of each instance, in MB.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@description('Writes per 20 s window for the app registration, shared by every instance (190, or less if other tools use it).')
@minValue(1)
@maxValue(200)
param writeBudget int = 190

@description('Replication of the storage account (zone-redundant where the region offers it).')
@allowed([
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_LRS'
])
param storageSku string = 'Standard_ZRS'

@description('Entra tenant of the Intune app registration.')
param tenantId string

@description('Client id of the Intune app registration.')
param graphClientId string

@description('Key Vault secret URI of the app registration\'s client secret (a Key Vault reference); empty (the default) for no secret at all: the function app signs in to Graph with its user-assigned identity as a federated credential of the app registration.')
param clientSecretUri string = ''

@description('Whether the attest-sweep timer sweeps (SWEEP_ENABLED); its ticks are refused otherwise.')
param sweepEnabled bool = false

@description('Name of the Key Vault (in this resource group) holding that secret; empty when no secret is used.')
param keyVaultName string = ''

var storageName = toLower('attest${uniqueString(resourceGroup().id, name)}')
var workQueueName = 'intune-attest-work'
var resultQueueName = 'intune-attest-results'
var stateContainerName = 'intune-attest-state'
var packageContainerName = 'app-package'
var storageQueueDataContributor = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${name}-identity'
  location: location
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: no virtual network in this deployment; every request is authenticated by Entra ID (shared keys are off)
  // checkov:skip=CKV_AZURE_206: replication is the storageSku parameter (zone-redundant by default), which checkov does not resolve
  // checkov:skip=CKV_AZURE_43: the name is computed (attest + uniqueString), which checkov cannot evaluate
  name: storageName
  location: location
  kind: 'StorageV2'
  sku: {
    name: storageSku
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource stateContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: stateContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource packageContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: packageContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource workQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: workQueueName
}

resource workPoisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: '${workQueueName}-poison'
}

resource resultQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: resultQueueName
}

// Claims, kept results and used signatures are read with their own expiry;
// this removes the old ones (the budget blobs are rewritten all the time).
resource stateLifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'expire-old-state'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              prefixMatch: [
                '${stateContainerName}/delivery/'
                '${stateContainerName}/request/'
                '${stateContainerName}/sweep/'
                '${stateContainerName}/replay/'
              ]
            }
            actions: {
              baseBlob: {
                delete: {
                  daysAfterModificationGreaterThan: 8
                }
              }
            }
          }
        }
      ]
    }
  }
}

resource queueRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identity.id, storageQueueDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataContributor)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource blobRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identity.id, storageBlobDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = if (!empty(keyVaultName)) {
  name: keyVaultName
}

resource secretsRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(keyVaultName)) {
  name: guid(resourceGroup().id, keyVaultName, identity.id, keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: '${name}-logs'
  location: location
  properties: {
    retentionInDays: 30
    sku: {
      name: 'PerGB2018'
    }
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: '${name}-insights'
  location: location
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
  }
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: Flex Consumption scales from zero; zone redundancy is a per-region option of the plan
  name: '${name}-plan'
  location: location
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: the webhook is called from outside (function key, and signatures when ATTEST_WEBHOOK_SECRETS is set)
  // checkov:skip=CKV_AZURE_17: callers authenticate with the function key and signatures, not client certificates
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales from zero; queue messages wait for an instance, none is lost
  // checkov:skip=CKV_AZURE_213: a custom handler has no health endpoint of its own; the host restarts a handler that stops answering
  name: name
  location: location
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identity.id}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    keyVaultReferenceIdentity: identity.id
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${packageContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identity.id
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'custom'
        version: '1.0'
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: concat([
        {
          name: 'AzureWebJobsStorage__accountName'
          value: storage.name
        }
        {
          name: 'AzureWebJobsStorage__credential'
          value: 'managedidentity'
        }
        {
          name: 'AzureWebJobsStorage__clientId'
          value: identity.properties.clientId
        }
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: insights.properties.ConnectionString
        }
        {
          name: 'ATTEST_WORK_QUEUE'
          value: workQueueName
        }
        {
          name: 'ATTEST_STATE_CONTAINER'
          value: stateContainerName
        }
        {
          name: 'ATTEST_WRITE_BUDGET'
          value: string(writeBudget)
        }
        {
          name: 'AZURE_TENANT_ID'
          value: tenantId
        }
        {
          name: 'AZURE_CLIENT_ID'
          value: graphClientId
        }
        {
          name: 'SWEEP_ENABLED'
          value: string(sweepEnabled)
        }
      ], empty(clientSecretUri) ? [
        {
          name: 'ATTEST_FEDERATION'
          value: 'managed_identity'
        }
        {
          name: 'ATTEST_MANAGED_IDENTITY_CLIENT_ID'
          value: identity.properties.clientId
        }
      ] : [
        {
          name: 'AZURE_CLIENT_SECRET'
          value: '@Microsoft.KeyVault(SecretUri=${clientSecretUri})'
        }
      ])
    }
  }
  dependsOn: [
    queueRole
    blobRole
    packageContainer
    stateContainer
    workQueue
    workPoisonQueue
    resultQueue
  ]
}

output functionAppName string = app.name
output storageAccountName string = storage.name
output identityClientId string = identity.properties.clientId
