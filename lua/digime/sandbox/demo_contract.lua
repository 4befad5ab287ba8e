-- The demo contract: a key pair for `make demo`, the specs and offline development.
-- TEST ONLY. This private key is public (it is in this repository); never use it for a real
-- digi.me contract.
return {
  application_id = "demo-app",
  contract_id = "demo-contract",
  test_only = true,
  private_key = [[
-----BEGIN RSA PRIVATE KEY-----
MIIEowIBAAKCAQEAxZ42vOSwaz7V4AzvUWu+M1OuJroTrrJFsdPlZCuF+GM65puB
wbpezTl5S1bV0R/mv1zB/j+nklft9WaPLiuKi+TOz/JUvjmBjvfFqY7BWsTS54uv
Ox5e1BYAgR3qReRFiaHHb3Po7ykGhBbEFvpG0NfwmTNv2r+Hrgulzss/Gch7IqgO
fuPw183hnKSNd7gD2EAYYWBNRMs5uJ8fxNmBn6X0yO6RMJSAMohi1XOB9l+uxWPF
S+ClGmdUeYkfcV4TmlPsS+8fJI/ZQeMTA48uoDgu6dWeLKd/33zXlb7fg/HuVDES
RtbDsQWx1LD3YpXCMdm8zFAFFvdt0XW0kO3/tQIDAQABAoIBAA785WTlKVYw8VKp
WHtB4y6MYbBxO23r+mo2ynaS8Hm6uOxlje1N/8Or4L2si9HtC/imhdYNKN3qClOq
4CAd0Ee05lSSKgg1X1SjCRxHhfWm6OIDz5n5vzJxqr8gMDT1z6pVGUWkMl31LBfX
jC6786QCRK6x3oFmNlmma4BoHNSNJEoUOLp4/r/brcSSNfZt9ZzejLR1BMbrSHop
uqqKPR/0EBEnshpFhKPwSkw7Bm0pP6z9+oFUg90FizQ/+krxiUSk0rX5g9yyb3b+
EfndqhCuFwyWcBItJ6vbTROMv6TJQbC3fN+MEUps6lqGMe9nayP4psemAiSKWsBe
XQI9oYECgYEA8TfAZuwuG6tarISg0W/EBsC9z9oPNii2CIFaO0iBa7Vhn66MIbks
MOpoH1OkPncCYDUBNoiF4B9uJ4UamcjUpvldAp9wuMTyLU4G+V/QQyD6MWBppZcS
B3m69ZiLP6QMx0dSaBgjFIUFbcQfLgUT7a+deYnro5do9lSUgMYOF/UCgYEA0bp3
BolGCDi2LoOiDj/xGiyxxBydbsXCWoZXudo2/GKR/80qq1DMkQdWdZfwjYZVkF+g
7dLHaCsiXfir4wNfaXpOX7SRdvj6p1IpW4rI8OMgPC6fANGtYD3X4N0ZFw2Bxutv
QdwKjcw4DlLTouma75r+ZMXd3Q21FGIDt1qQMMECgYEA49XB8DTSVCYkbeCTuV40
rCAu6HzRc1k+nof2/xm7zE002UtXZp7tQ4KUOEqbTri/0Lkf3S9UK93kAIXzGyAa
41+S32BTauHy0KHram16W31xc2PaRaKMT+1FjqW3mLPNsggGqPVrZP1DpGri/Gel
bBI8zkhb/leLt2cqIPtw4mUCgYA3sgkB11qdvFHFMHfMyPZCOTRMHD1CuYnPeHW7
iVOo2pRjFh0Kub5ZlVVEjUD4lIAMgxi9j4gdBbdutScQdkjUPgKqL82hhqUp4gvR
n52VOvvIf6kCEqy0LjgyIwUStieMp+E34DN9TIpmY2CIlvjqQILmSBWPKqC39P9/
pbE9AQKBgEHcOLICVxZtpmikTWwYJ47KLkYuc8tiy3H5rEZURH0vNSFXNkboJxUh
ADtPZd+85p6bKW1dJL6/LTEKOgaYr/YyAqiMzN/8oLa/SxFadYFkB3IpK+JG7Bms
n0SKYlzHleEIy3UHzCYcWnRiLGm7JAPZDI3cTpwra5bWCpqB2Sin
-----END RSA PRIVATE KEY-----
]],
  public_key = [[
-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAxZ42vOSwaz7V4AzvUWu+
M1OuJroTrrJFsdPlZCuF+GM65puBwbpezTl5S1bV0R/mv1zB/j+nklft9WaPLiuK
i+TOz/JUvjmBjvfFqY7BWsTS54uvOx5e1BYAgR3qReRFiaHHb3Po7ykGhBbEFvpG
0NfwmTNv2r+Hrgulzss/Gch7IqgOfuPw183hnKSNd7gD2EAYYWBNRMs5uJ8fxNmB
n6X0yO6RMJSAMohi1XOB9l+uxWPFS+ClGmdUeYkfcV4TmlPsS+8fJI/ZQeMTA48u
oDgu6dWeLKd/33zXlb7fg/HuVDESRtbDsQWx1LD3YpXCMdm8zFAFFvdt0XW0kO3/
tQIDAQAB
-----END PUBLIC KEY-----
]],
}
