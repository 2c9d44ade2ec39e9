"""Online alignment: samplers that draw responses from the policy (or a mixture of models) as token ids."""
