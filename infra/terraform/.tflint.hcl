# tflint configuration for every module and example under infra/terraform
# (run upstream by .github/workflows/terraform.yml with --recursive).

config {
  call_module_type = "local"
}

plugin "terraform" {
  enabled = true
  preset  = "all"
}

plugin "aws" {
  enabled = true
  version = "0.38.0"
  source  = "github.com/terraform-linters/tflint-ruleset-aws"
}
