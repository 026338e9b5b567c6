// Uses Bicep checkov's parser cannot read (an import and a lambda):
// scripts/lint-template must fail on it, although checkov exits 0.
import { names } from 'names.bicep'

var doubled = map([1, 2], x => x * 2)

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: 'attestbroken'
  location: 'westeurope'
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
}
